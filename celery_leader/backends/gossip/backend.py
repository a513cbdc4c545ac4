"""``gossip://HOST:PORT?members=n1,n2,n3``: a quorum compare-and-swap register over Serf.

No shared server: the candidates agree among themselves. Each lock is a CASPaxos register
(Rystsov 2018, "CASPaxos: Replicated State Machines without logs") replicated over a
*configured* set of serf nodes (``members``); a majority of that set is a quorum.

* Transport: the local serf agent's RPC (``HOST:PORT``). A proposer sends each phase as a
  serf *query* filtered to ``members``; every member's acceptor (a process attached to
  that node's agent, normally the candidate itself) answers with ``respond``. Only
  answers from configured members count, once per member.
* Acceptor state (promised ballot; accepted ballot and value, per lock name) is kept on
  disk under ``state_dir`` and fsynced before any answer leaves, so a restarted acceptor
  remembers its promises. Processes sharing one agent must share its ``state_dir`` (the
  default does); a file lock serialises them.
* A ``version`` is the ballot that first wrote the value (``"<counter hex>.<proposer>"``):
  a proposer that finishes a half-written value re-accepts it under a new ballot without
  changing its version.
* Reads promise nothing (they would preempt the leader's renewals); an accept reserves
  the next ballot for the same proposer, so a leader renews in one round trip.

See ``docs/gossip.md`` for the safety argument and what holds under partition.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from ...errors import BackendUnavailable, ConfigurationError
from ...lock import Backend
from ...urls import UrlOptions, redact
from .acceptor import Acceptor, release_acceptor, shared_acceptor
from .proposer import CAPABILITIES, GossipLock
from .serf import SerfClient, SerfError, SerfRPCError

__all__ = ["GossipBackend", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 7373
START_AGENT_HINT = (
    "start a serf agent on this host, for example "
    "`serf agent -node=$(hostname) -bind=0.0.0.0:7946 -rpc-addr=127.0.0.1:7373` and join it to the "
    "others with `serf join OTHER:7946`"
)


class GossipBackend(Backend):
    """Locks replicated over the serf nodes named in ``members``; this process votes for its own node."""

    schemes = ("gossip",)
    capabilities = CAPABILITIES
    OPTIONS: ClassVar[tuple[str, ...]] = ("members", "auth_key", "query_timeout", "state_dir", "acceptor",
                                          "poll_interval", "resend")

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        members: list[str],
        auth_key: str | None = None,
        query_timeout: float = 1.0,
        state_dir: str | None = None,
        acceptor: bool = True,
        poll_interval: float = 0.5,
        resend: float = 0.1,
    ) -> None:
        if not members:
            raise ConfigurationError(
                "gossip:// needs the acceptor set: add ?members=node1,node2,node3 (the serf node names whose "
                "majority forms a quorum; use an odd number, at least 3 to survive a failure)"
            )
        if len(set(members)) != len(members):
            raise ConfigurationError(f"gossip members list names a node twice: {','.join(members)}")
        self.host, self.port, self.auth_key = host, port, auth_key
        self.members = list(members)
        self.member_set = frozenset(members)
        self.quorum = len(members) // 2 + 1
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval
        self.resend = resend
        self._client: SerfClient | None = None
        self._client_guard = threading.Lock()
        self._closed = False
        if len(members) < 3:
            log.warning("gossip members=%s: fewer than 3 members cannot survive the loss of any one",
                        ",".join(members))
        client = self.client(configuring=True)
        try:
            self.node = client.local_name(timeout=5.0)
        except SerfError as exc:
            client.close()
            raise ConfigurationError(f"serf agent at {host}:{port} did not report its node name: {exc}") from exc
        try:
            self._start_acceptor(acceptor, state_dir)
        except BaseException:
            client.close()
            raise

    def _start_acceptor(self, acceptor: bool, state_dir: str | None) -> None:
        """Serve (or share) the acceptor of the local node, if it is a member."""
        host, port, auth_key = self.host, self.port, self.auth_key
        self.acceptor: Acceptor | None = None
        if acceptor and self.node in self.member_set:
            directory = Path(state_dir) if state_dir else _default_state_dir(self.node)
            if not directory.is_absolute():
                raise ConfigurationError(f"gossip state_dir={state_dir!r} must be an absolute path")
            self.acceptor = shared_acceptor(host, port, auth_key, self.node, directory)
            if not self.acceptor.connected.wait(5.0):
                log.warning("acceptor for node %s is not connected to its agent yet", self.node)
        elif acceptor:
            log.info("serf node %r is not in members=%s: this process proposes but does not vote", self.node,
                     ",".join(self.members))

    @classmethod
    def from_url(cls, url: str) -> "GossipBackend":
        parts = urlsplit(url)
        if parts.scheme != "gossip":
            raise ConfigurationError(f"not a gossip:// URL: {redact(url)!r}")
        options = UrlOptions(parts.query, scheme="gossip", known=cls.OPTIONS)
        members = [m.strip() for m in (options.text("members") or "").split(",") if m.strip()]
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ConfigurationError(f"gossip URL {redact(parts.netloc)!r} has a bad port") from None
        auth = options.text("auth_key") or (unquote(parts.password) if parts.password else None)
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            members=members,
            auth_key=auth,
            query_timeout=options.seconds("query_timeout", 1.0, positive=True),
            state_dir=options.text("state_dir"),
            acceptor=options.flag("acceptor", True),
            poll_interval=options.seconds("poll_interval", 0.5, positive=True),
            resend=options.seconds("resend", 0.1, positive=True),
        )

    def client(self, configuring: bool = False, timeout: float = 2.0) -> SerfClient:
        """The shared RPC connection for proposing; reconnects (within ``timeout``) after a failure."""
        with self._client_guard:
            if self._client is not None and not self._client.closed:
                return self._client
            try:
                self._client = SerfClient(self.host, self.port, auth_key=self.auth_key, timeout=2.0,
                                          connect_timeout=max(0.05, min(2.0, timeout)))
            except SerfRPCError as exc:
                raise ConfigurationError(
                    f"serf agent at {self.host}:{self.port} refused the RPC session ({exc}); if the agent runs "
                    "with -rpc-auth, give the same key as auth_key= in the URL"
                ) from exc
            except SerfError as exc:
                if configuring:
                    raise ConfigurationError(
                        f"no serf agent answers at {self.host}:{self.port} ({exc}); {START_AGENT_HINT}, "
                        "or point the gossip:// URL at its -rpc-addr"
                    ) from exc
                raise BackendUnavailable(f"serf agent {self.host}:{self.port} unreachable: {exc}") from exc
            return self._client

    def drop_client(self, client: SerfClient) -> None:
        with self._client_guard:
            if self._client is client:
                self._client = None
        client.close()

    def lock(self, name: str) -> GossipLock:
        return GossipLock(self, name)

    def check(self, timeout: float = 5.0) -> None:
        """Connect, and refuse a members list that serf has mostly never heard of (a typo)."""
        try:
            known = {m.name: m.status for m in self.client(configuring=True).members(timeout=timeout)}
        except SerfError as exc:
            raise BackendUnavailable(f"serf agent {self.host}:{self.port}: {exc}") from exc
        unknown = [m for m in self.members if m not in known]
        if len(unknown) >= self.quorum:
            raise ConfigurationError(
                f"gossip members {','.join(unknown)} are not serf nodes this agent knows "
                f"(it knows {','.join(sorted(known)) or 'only itself'}); check the names with `serf members` "
                "and join the agents with `serf join`"
            )
        if unknown:
            log.warning("gossip members %s are unknown to serf right now; quorum needs %d of %d",
                        ",".join(unknown), self.quorum, len(self.members))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.acceptor is not None:
            release_acceptor(self.acceptor)
        with self._client_guard:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def describe(self) -> str:
        return f"gossip://{self.host}:{self.port}?members={','.join(self.members)}"


def _default_state_dir(node: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node)
    return Path(base) / "celery-leader" / "gossip" / safe
