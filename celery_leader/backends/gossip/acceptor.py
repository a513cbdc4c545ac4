"""The acceptor side of the gossip backend's CASPaxos registers: durable votes.

Every configured member runs one acceptor (normally inside the candidate process itself)
attached to its serf agent: it answers the proposers' ``prepare``/``accept``/``read``
queries from state kept on disk under ``state_dir``, fsynced before any answer leaves,
so a restarted acceptor remembers its promises. The ballot and value types and their
wire form live here too, since the proposer reads what the acceptors store.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import msgpack

from ...errors import BackendUnavailable, ConfigurationError
from .serf import SerfClient, SerfError, as_query

__all__ = [
    "QUERY_NAME", "Ballot", "Value", "ZERO", "parse_ballot", "parse_value", "successor", "version_of",
    "AcceptorState", "AcceptorStore", "Acceptor", "shared_acceptor", "release_acceptor",
]

log = logging.getLogger(__name__)

#: the serf query name every acceptor answers
QUERY_NAME = "celery-leader-paxos"
#: the longest an acceptor's serving thread sleeps on its open stream without looking
#: whether it was stopped (stop() closes the connection, which wakes it at once)
STREAM_CHECK = 30.0

Ballot = tuple[int, str]
#: a register value: (version, raw record bytes)
Value = tuple[str, bytes]
ZERO: Ballot = (0, "")


def parse_ballot(raw: Any) -> Ballot:
    """A ballot from its wire form (``None`` is the zero ballot); ValueError if malformed."""
    if raw is None:
        return ZERO
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and isinstance(raw[0], int) and isinstance(raw[1], str)):
        raise ValueError(f"bad ballot {raw!r}")
    return (raw[0], raw[1])


def parse_value(raw: Any) -> Value | None:
    """A register value from its wire form; ValueError if malformed."""
    if raw is None:
        return None
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and isinstance(raw[0], str)
            and isinstance(raw[1], (bytes, bytearray))):
        raise ValueError(f"bad value {type(raw).__name__}")
    return (raw[0], bytes(raw[1]))


def successor(ballot: Ballot) -> Ballot:
    """The ballot an accept at ``ballot`` reserves for the same proposer's next write."""
    return (ballot[0] + 1, ballot[1])


def version_of(ballot: Ballot) -> str:
    return f"{ballot[0]:x}.{ballot[1]}"




@dataclass
class AcceptorState:
    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    value: Value | None = None


def _version_change(old: Value | None, new: Value | None) -> str | None:
    """The new version if accepting ``new`` over ``old`` changes the version, else None."""
    old_version = old[0] if old is not None else None
    new_version = new[0] if new is not None else None
    return new_version if new_version != old_version else None


class StoreClosed(BackendUnavailable):
    """The acceptor was stopped: a query that arrives now is dropped, not answered."""


class AcceptorStore:
    """Per-lock acceptor state in files under ``state_dir``, fsynced before answering.

    A file lock (``state_dir/lock``) serialises every process that serves the same node.
    """

    def __init__(self, state_dir: Path, node: str) -> None:
        self.dir = state_dir
        self.node = node
        try:
            (state_dir / "locks").mkdir(parents=True, exist_ok=True)
            marker = state_dir / "node"
            if marker.exists():
                owner = marker.read_text().strip()
                if owner != node:
                    raise ConfigurationError(
                        f"gossip state_dir {state_dir} holds the acceptor state of serf node {owner!r}, but this "
                        f"agent is node {node!r}; give every node its own state_dir (never copy one between nodes)"
                    )
            else:
                self._write_atomic(marker, node.encode())
            self._lock_fd: int | None = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"gossip state_dir {state_dir} is not usable ({exc}); set state_dir= to a writable directory "
                "that survives restarts"
            ) from exc
        self._mutex = threading.Lock()
        self._paths: dict[str, str] = {}

    def close(self) -> None:
        """Close the lock file; later calls raise :class:`StoreClosed` (never touch a reused fd)."""
        with self._mutex:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _path(self, name: str) -> str:
        """The state file of lock ``name`` (remembered: every message of that lock needs it)."""
        path = self._paths.get(name)
        if path is None:
            path = os.path.join(self.dir, "locks", hashlib.sha256(name.encode()).hexdigest()[:40] + ".state")
            if len(self._paths) < 1024:
                self._paths[name] = path
        return path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._mutex:
            fd = self._lock_fd
            if fd is None:
                raise StoreClosed(f"the acceptor state of node {self.node!r} is closed")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def load(self, name: str) -> AcceptorState:
        try:
            with open(self._path(name), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return AcceptorState()
        doc = msgpack.unpackb(raw, raw=False)
        return AcceptorState(parse_ballot(doc.get("p")), parse_ballot(doc.get("a")), parse_value(doc.get("v")))

    def save(self, name: str, state: AcceptorState) -> None:
        doc = {"n": name, "p": list(state.promised), "a": list(state.accepted),
               "v": list(state.value) if state.value is not None else None}
        self._write_atomic(self._path(name), msgpack.packb(doc, use_bin_type=True))

    @staticmethod
    def _write_atomic(path: Path | str, data: bytes) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Apply one message; return (answer, the new version if the accepted version changed)."""
        op, name = request["o"], request["n"]
        if not isinstance(name, str):
            raise ValueError("lock name is not a string")
        ballot = parse_ballot(request.get("b"))
        with self.locked():
            state = self.load(name)
            if op == "r":  # peek: report, promise nothing (reads must not preempt writers)
                return {"ok": True, "p": list(state.promised), "a": list(state.accepted),
                        "v": list(state.value) if state.value is not None else None}, None
            if op == "p":
                ok = ballot >= state.promised and ballot > state.accepted
                if ok and ballot != state.promised:
                    state.promised = ballot
                    self.save(name, state)
                answer = {"ok": ok, "p": list(state.promised), "a": list(state.accepted),
                          "v": list(state.value) if state.value is not None else None}
                return answer, None
            if op == "a":
                value = parse_value(request.get("v"))
                if state.accepted == ballot and state.value == value:  # a resend of what we accepted
                    return {"ok": True, "p": list(state.promised), "a": list(state.accepted)}, None
                ok = ballot >= state.promised and ballot >= state.accepted
                changed = None
                if ok:
                    changed = _version_change(state.value, value)
                    state.accepted = ballot
                    # accepting b also promises b's successor to the same proposer (CASPaxos
                    # 2.2.1): its next write may skip the prepare, since this quorum's answer
                    # to that prepare is known - "b, with the value just accepted"
                    state.promised = successor(ballot)
                    state.value = value
                    self.save(name, state)
                return {"ok": ok, "p": list(state.promised), "a": list(state.accepted)}, changed
            raise ValueError(f"unknown operation {op!r}")

    def peek(self, name: str) -> AcceptorState:
        with self.locked():
            return self.load(name)


class Acceptor:
    """Answers the Paxos queries for the local serf node; reconnects if the agent restarts.

    One per (agent, state_dir) in a process, shared by every backend object there.
    """

    def __init__(self, host: str, port: int, auth_key: str | None, node: str, state_dir: Path) -> None:
        self.host, self.port, self.auth_key, self.node = host, port, auth_key, node
        self.store = AcceptorStore(state_dir, node)
        self.refs = 0
        self.connected = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0
        #: per name: (generation, version, value) of the last accept that changed its version
        self._changes: dict[str, tuple[int, str, Value | None]] = {}
        self._stop = threading.Event()
        self._client: SerfClient | None = None
        self._thread = threading.Thread(target=self._serve, name=f"gossip-acceptor-{node}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Keep one query stream open to the local agent, reconnecting every 0.2 s."""
        while not self._stop.is_set():
            client = None
            try:
                client = SerfClient(self.host, self.port, auth_key=self.auth_key, timeout=2.0)
                name = client.local_name()
                if name != self.node:
                    log.error("serf agent %s:%s is now node %r, not %r: not voting", self.host, self.port, name,
                              self.node)
                    client.close()
                    self._stop.wait(1.0)
                    continue
                # answered on the connection's reader thread (a thread hand-off less per
                # query), so the answer is sent without waiting for the agent's reply
                client.stream("query", functools.partial(self._on_record, client), inline=True)
                self._client = client
                self.connected.set()
                # sleep until the connection ends: stop() closes it, and so does a broken
                # agent (a poll here woke this thread five times a second for nothing);
                # _stop is looked at after _client is set, so a stop() that came before
                # that is not missed, and the timeout is only a second line of defence
                while not self._stop.is_set() and not client.wait_closed(STREAM_CHECK):
                    pass
            except SerfError as exc:
                log.debug("acceptor %s: agent %s:%s not reachable: %s", self.node, self.host, self.port, exc)
            finally:
                self.connected.clear()
                if client is not None:
                    client.close()
            self._stop.wait(0.2)

    def _on_record(self, client: SerfClient, record: Any) -> None:
        query = as_query(record)
        if query is None or query.name != QUERY_NAME or self._stop.is_set():
            return  # a stopping acceptor no longer votes (the agent may still deliver queries)
        try:
            request = msgpack.unpackb(query.payload, raw=False)
            answer, changed = self.store.handle(request)
        except StoreClosed:
            return
        except Exception as exc:  # noqa: BLE001 - garbage from the network is dropped, not fatal
            log.warning("acceptor %s: ignoring a malformed paxos query (%d bytes): %s", self.node,
                        len(query.payload), exc)
            return
        try:
            client.respond(query.id, msgpack.packb(answer, use_bin_type=True), wait=False)
        except SerfError as exc:
            log.debug("acceptor %s: could not answer query %s: %s", self.node, query.id, exc)
        if changed is not None:
            with self._changed:
                self._generation += 1
                self._changes[request["n"]] = (self._generation, changed, parse_value(request.get("v")))
                self._changed.notify_all()

    def local_version(self, name: str) -> str | None:
        """The version of the value this acceptor holds for ``name`` (maybe behind or ahead)."""
        value = self.store.peek(name).value
        return value[0] if value is not None else None

    def promised(self, name: str) -> Ballot:
        return self.store.peek(name).promised

    def generation(self) -> int:
        with self._changed:
            return self._generation

    def wait_change(self, name: str, since: int, other_than: str | None, deadline: float) -> Value | None:
        """Wait until this acceptor takes a version of ``name`` other than ``other_than`` after
        ``since``; return the value it took (``None``: no such change before ``deadline``).

        (A lagging acceptor catching up to ``other_than`` itself is no change.) The value is
        what this node accepted, not necessarily what a quorum chose: a hint.
        """
        def changed() -> bool:
            generation, version, _ = self._changes.get(name, (0, "", None))
            return generation > since and version != other_than

        with self._changed:
            if not self._changed.wait_for(changed, max(0.0, deadline - time.monotonic())):
                return None
            return self._changes[name][2]

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.close()
        self._thread.join(3.0)
        self.store.close()


_SHARED: dict[tuple[str, int, str], Acceptor] = {}
_SHARED_GUARD = threading.Lock()


def shared_acceptor(host: str, port: int, auth_key: str | None, node: str, state_dir: Path) -> Acceptor:
    """The process's one acceptor for (agent, ``state_dir``), started on first use.

    Every call counts a user; :func:`release_acceptor` stops it after the last one.
    """
    key = (host, port, str(state_dir))
    with _SHARED_GUARD:
        acceptor = _SHARED.get(key)
        if acceptor is None:
            acceptor = Acceptor(host, port, auth_key, node, state_dir)
            _SHARED[key] = acceptor
        acceptor.refs += 1
    return acceptor


def release_acceptor(acceptor: Acceptor) -> None:
    """Give back one use of :func:`shared_acceptor`; the last one stops the acceptor."""
    key = (acceptor.host, acceptor.port, str(acceptor.store.dir))
    with _SHARED_GUARD:
        acceptor.refs -= 1
        last = acceptor.refs <= 0
        if last and _SHARED.get(key) is acceptor:
            del _SHARED[key]
    if last:
        acceptor.stop()
