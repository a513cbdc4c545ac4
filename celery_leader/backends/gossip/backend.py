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

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import msgpack

from ...lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict, Lock, Versioned
from ...record import LeaderRecord, decode_or_placeholder, encode_record
from .serf import CLOSED, SerfClient, SerfError, SerfRPCError, as_query

__all__ = ["GossipBackend", "GossipLock", "Acceptor", "QUERY_NAME"]

log = logging.getLogger("celery_leader.gossip")

CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)

#: the serf query name every acceptor answers
QUERY_NAME = "celery-leader-paxos"
#: serf's default query and response size limit is 1024 bytes; keep headroom for framing
MAX_VALUE_BYTES = 700
DEFAULT_PORT = 7373
#: a read whose first quorum of answers disagrees waits this long for the other members,
#: hoping a quorum agrees: a member that holds an unfinished write (a crashed leader's
#: last renewal) would otherwise make reads flip between two versions, and every flip
#: restarts the followers' lease clocks
AGREE_LINGER = 0.15
START_AGENT_HINT = (
    "start a serf agent on this host, for example "
    "`serf agent -node=$(hostname) -bind=0.0.0.0:7946 -rpc-addr=127.0.0.1:7373` and join it to the "
    "others with `serf join OTHER:7946`"
)

Ballot = tuple[int, str]
#: a register value: (version, raw record bytes)
Value = tuple[str, bytes]
ZERO: Ballot = (0, "")


def _ballot(raw: Any) -> Ballot:
    if raw is None:
        return ZERO
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and isinstance(raw[0], int) and isinstance(raw[1], str)):
        raise ValueError(f"bad ballot {raw!r}")
    return (raw[0], raw[1])


def _value(raw: Any) -> Value | None:
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


# --------------------------------------------------------------------------- acceptor


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
            self._lock_fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"gossip state_dir {state_dir} is not usable ({exc}); set state_dir= to a writable directory "
                "that survives restarts"
            ) from exc
        self._mutex = threading.Lock()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _path(self, name: str) -> Path:
        return self.dir / "locks" / (hashlib.sha256(name.encode()).hexdigest()[:40] + ".state")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._mutex:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def load(self, name: str) -> AcceptorState:
        try:
            raw = self._path(name).read_bytes()
        except FileNotFoundError:
            return AcceptorState()
        doc = msgpack.unpackb(raw, raw=False)
        return AcceptorState(_ballot(doc.get("p")), _ballot(doc.get("a")), _value(doc.get("v")))

    def save(self, name: str, state: AcceptorState) -> None:
        doc = {"n": name, "p": list(state.promised), "a": list(state.accepted),
               "v": list(state.value) if state.value is not None else None}
        self._write_atomic(self._path(name), msgpack.packb(doc, use_bin_type=True))

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Apply one message; return (answer, the new version if the accepted version changed)."""
        op, name = request["o"], request["n"]
        if not isinstance(name, str):
            raise ValueError("lock name is not a string")
        ballot = _ballot(request.get("b"))
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
                value = _value(request.get("v"))
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
        #: lock name -> (generation, version) of its last version change here
        self._changes: dict[str, tuple[int, str]] = {}
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
                client.stream("query", lambda rec, c=client: self._on_record(c, rec))
                self._client = client
                self.connected.set()
                while not self._stop.is_set() and not client.closed:
                    self._stop.wait(0.2)
            except SerfError as exc:
                log.debug("acceptor %s: agent %s:%s not reachable: %s", self.node, self.host, self.port, exc)
            finally:
                self.connected.clear()
                if client is not None:
                    client.close()
            self._stop.wait(0.2)

    def _on_record(self, client: SerfClient, record: Any) -> None:
        query = as_query(record)
        if query is None or query.name != QUERY_NAME:
            return
        try:
            request = msgpack.unpackb(query.payload, raw=False)
            answer, changed = self.store.handle(request)
        except Exception as exc:  # noqa: BLE001 - garbage from the network is dropped, not fatal
            log.warning("acceptor %s: ignoring a malformed paxos query (%d bytes): %s", self.node,
                        len(query.payload), exc)
            return
        try:
            client.respond(query.id, msgpack.packb(answer, use_bin_type=True), timeout=2.0)
        except SerfError as exc:
            log.debug("acceptor %s: could not answer query %s: %s", self.node, query.id, exc)
        if changed is not None:
            with self._changed:
                self._generation += 1
                self._changes[request["n"]] = (self._generation, changed)
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

    def wait_change(self, name: str, since: int, other_than: str | None, deadline: float) -> bool:
        """Wait until this acceptor takes a version of ``name`` other than ``other_than`` after ``since``.

        (A lagging acceptor catching up to ``other_than`` itself is no change.)
        """
        def changed() -> bool:
            generation, version = self._changes.get(name, (0, ""))
            return generation > since and version != other_than

        with self._changed:
            return self._changed.wait_for(changed, max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.close()
        self._thread.join(3.0)
        self.store.close()


_ACCEPTORS: dict[tuple[str, int, str], Acceptor] = {}
_ACCEPTORS_GUARD = threading.Lock()


# --------------------------------------------------------------------------- proposer


@dataclass
class _Round:
    oks: dict[str, dict[str, Any]]
    highest_seen: int
    rejected: bool
    #: peek rounds: the value a quorum reported under one accepted ballot (None: none did)
    agreed: Value | None = None
    agreed_found: bool = False


class GossipLock(Lock):
    """One lock name as a CASPaxos register over the configured members."""

    capabilities = CAPABILITIES

    def __init__(self, backend: "GossipBackend", name: str) -> None:
        if not name:
            raise ConfigurationError("the election name must not be empty")
        self._backend = backend
        self.name = name
        self._proposer = uuid.uuid4().hex[:12]
        self._counter = 0
        self._guard = threading.Lock()
        self._closed = False
        #: our last successful accept (ballot, value): lets the next update skip the prepare
        self._last: tuple[Ballot, Value | None] | None = None

    # --- the contract ---

    def get(self, timeout: float) -> Versioned | None:
        """One read round that promises nothing, so that readers never preempt writers.

        If a quorum reports one accepted ballot, that value is chosen. Otherwise (a write
        under way, or a member that missed an accept) the answer is the value with the
        highest accepted ballot among a quorum's answers: the value the next prepare
        through those members would adopt. Either way it is at least as new as every
        write acknowledged before the read began, because that write's majority shares a
        member with the answering quorum and accepted ballots never go down. A value read
        this way may still be superseded without ever being chosen; a compare-and-swap
        against its version then fails with :class:`Conflict` - see docs/gossip.md.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        answers = self._round({"o": "r", "n": self.name}, deadline, agree=True)
        quorum = self._backend.quorum
        if answers is None or len(answers.oks) < quorum:
            got = 0 if answers is None else len(answers.oks)
            raise BackendUnavailable(f"gossip lock {self.name!r}: {got} of the {quorum} members needed for a "
                                     f"quorum of {len(self._backend.members)} answered in time")
        if answers.agreed_found:
            value = answers.agreed
        else:
            best, value = ZERO, None
            for answer in answers.oks.values():
                accepted = _ballot(answer.get("a"))
                if accepted > best:
                    best, value = accepted, _value(answer.get("v"))
        if value is None:
            return None
        return Versioned(decode_or_placeholder(value[1]), value[0])

    def create(self, record: LeaderRecord, timeout: float) -> str:
        raw = self._encode(record)

        def change(current: Value | None) -> bytes | object:
            if current is not None:
                raise Conflict(f"lock {self.name!r} exists")
            return raw

        return self._execute(change, timeout)[0]  # type: ignore[index]

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        raw = self._encode(record)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._guard:  # one thread at most writes under the reserved successor ballot
            last, self._last = self._last, None
        tried: set[str] = set()
        if last is not None and last[1] is not None and last[1][0] == expected_version:
            landed, version = self._fast_accept(last[0], raw, deadline)
            if landed:
                return version
            tried.add(version)  # it may still have landed on some acceptors

        def change(current: Value | None) -> bytes | object:
            if current is None:
                raise Conflict(f"lock {self.name!r} does not exist")
            if current[0] != expected_version:
                raise Conflict(f"lock {self.name!r} changed")
            return raw

        return self._execute(change, max(0.0, deadline - time.monotonic()), mine=tried)[0]  # type: ignore[index]

    def _fast_accept(self, prev: Ballot, raw: bytes, deadline: float) -> tuple[bool, str]:
        """Write in one round trip after our own successful accept at ``prev``.

        A quorum that accepted ``prev`` promised ``successor(prev)`` to us in the same step,
        reporting ``prev`` as its highest accepted ballot: the prepare for the successor
        has in effect been answered, so an accept at the successor is a legitimate Paxos
        proposal wherever it lands. Acceptors that promised a higher ballot since refuse
        it; then (False, version) and the full path runs.
        """
        ballot = successor(prev)
        self._saw(ballot[0] + 1)  # the full path must never reuse the reserved successor
        value = (version_of(ballot), raw)
        try:
            answers = self._round({"o": "a", "n": self.name, "b": list(ballot), "v": list(value)},
                                  self._share(deadline))
        except BackendUnavailable:
            answers = None
        if answers is not None and len(answers.oks) >= self._backend.quorum:
            self._last = (ballot, value)
            return True, value[0]
        return False, value[0]

    def write_raw(self, raw: bytes, timeout: float = 5.0) -> str:
        """Store bytes as they are (garbage and foreign-record tests)."""
        return self._execute(lambda current: bytes(raw), timeout)[0]  # type: ignore[index]

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        acceptor = self._backend.acceptor
        if acceptor is not None and acceptor.connected.is_set():
            # the local acceptor sees every accept that reaches this node: wake on the next
            # new version there. It may lag (it missed an accept) or lead (a write in
            # flight), so a difference found up front is confirmed by a read, not trusted.
            since = acceptor.generation()
            if acceptor.local_version(self.name) != version:
                try:
                    got = self.get(max(0.05, min(deadline - time.monotonic(), self._backend.query_timeout)))
                except BackendUnavailable:
                    got = Versioned(LeaderRecord(), version or "")
                if (got.version if got is not None else None) != version:
                    return
            acceptor.wait_change(self.name, since, version, deadline)
            return
        while True:  # not a voter here (or its agent is away): poll
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                got = self.get(min(remaining, max(self._backend.query_timeout, 0.2)))
            except (BackendUnavailable, Conflict):
                got = None
            else:
                if (got.version if got else None) != version:
                    return
            time.sleep(max(0.0, min(self._backend.poll_interval, deadline - time.monotonic())))

    def close(self) -> None:
        self._closed = True

    def describe(self) -> str:
        return f"gossip lock {self.name!r} over {','.join(self._backend.members)}"

    # --- CASPaxos ---

    def _encode(self, record: LeaderRecord) -> bytes:
        raw = encode_record(record)
        if len(raw) > MAX_VALUE_BYTES:
            raise ConfigurationError(
                f"record of {len(raw)} bytes is larger than the {MAX_VALUE_BYTES} bytes a serf query can carry; "
                "shorten the identity or drop unknown keys"
            )
        return raw

    def _share(self, deadline: float) -> float:
        """The deadline of a fast first try: leave the slower fallback at least half the time."""
        now = time.monotonic()
        return min(deadline, now + max(self._backend.resend, (deadline - now) / 2))

    def _next_ballot(self) -> Ballot:
        with self._guard:
            floor = self._counter
            acceptor = self._backend.acceptor
            if acceptor is not None:
                with contextlib.suppress(Exception):
                    floor = max(floor, acceptor.promised(self.name)[0])
            self._counter = floor + 1
            return (self._counter, self._proposer)

    def _saw(self, counter: int) -> None:
        with self._guard:
            self._counter = max(self._counter, counter)

    def _execute(self, change: Callable[[Value | None], Any], timeout: float,
                 mine: set[str] | None = None, attempts: int = 1000) -> Value | None:
        """Run CASPaxos rounds until ``change`` is applied, a Conflict is decided, or time runs out."""
        deadline = time.monotonic() + max(0.0, timeout)
        mine = set() if mine is None else mine  # versions this call tried to write: seeing one means it landed
        attempt = 0
        why = "no answer"
        hurry = False  # our value is out there half-written: finish it before anybody else moves
        while True:
            if attempt >= attempts:
                raise BackendUnavailable(f"gossip lock {self.name!r}: {why}")
            if attempt and not hurry:
                pause = random.uniform(0, min(0.4, 0.05 * (2 ** min(attempt, 3))))
                if time.monotonic() + pause >= deadline:
                    raise BackendUnavailable(f"gossip lock {self.name!r}: no quorum in time ({why})")
                time.sleep(pause)
                # rather than duel with whoever preempted us, look first: if it won, lose
                # with Conflict now; if what we sent won, say so
                settled = self._look(change, mine, deadline)
                if settled is not None:
                    return settled
            attempt += 1
            ballot = self._next_ballot()
            prep = self._round({"o": "p", "n": self.name, "b": list(ballot)}, deadline)
            if prep is None:
                raise BackendUnavailable(f"gossip lock {self.name!r}: no quorum of {self._backend.quorum} "
                                         f"of {len(self._backend.members)} members answered in time ({why})")
            if len(prep.oks) < self._backend.quorum:
                why = "preempted by a higher ballot" if prep.rejected else "too few members answered"
                continue
            best_ballot, current = ZERO, None
            accepted_ballots = set()
            for answer in prep.oks.values():
                accepted = _ballot(answer.get("a"))
                accepted_ballots.add(accepted)
                if accepted > best_ballot or (accepted == best_ballot and current is None):
                    best_ballot, current = accepted, _value(answer.get("v"))
            settled = len(accepted_ballots) == 1  # a quorum accepted the same ballot: chosen
            conflict: Conflict | None = None
            if current is not None and current[0] in mine:
                if settled:
                    self._last = None  # our prepare moved the promises on: no fast path from here
                    return current  # a quorum holds our earlier attempt: it is chosen
                new: Value | None = current  # our earlier attempt landed on some acceptors: finish it
            else:
                try:
                    result = change(current)
                except Conflict as exc:
                    conflict, result = exc, _IDENTITY
                if conflict is not None:
                    # a refusal needs no write: it claims nothing, and writing back what we
                    # saw would only preempt the writer we lost to
                    raise conflict
                if result is _IDENTITY:
                    if settled:
                        return current
                    new = current  # finish what we saw before answering from it
                else:
                    new = (version_of(ballot), result)
                    mine.add(new[0])
            acc = self._round({"o": "a", "n": self.name, "b": list(ballot),
                               "v": list(new) if new is not None else None}, deadline)
            if acc is not None and len(acc.oks) >= self._backend.quorum:
                self._saw(ballot[0] + 1)  # its successor is reserved for the fast path
                self._last = (ballot, new)
                return new
            if acc is None:
                raise BackendUnavailable(f"gossip lock {self.name!r}: accept phase got no quorum in time")
            why = "accept preempted by a higher ballot" if acc.rejected else "too few members accepted"
            hurry = new is not None and new[0] in mine

    def _look(self, change: Callable[[Value | None], Any], mine: set[str], deadline: float) -> Value | None:
        """A read between attempts: our own chosen value, a Conflict raised, or None to retry."""
        try:
            answers = self._round({"o": "r", "n": self.name}, self._share(deadline), agree=True)
        except BackendUnavailable:
            return None
        if answers is None or len(answers.oks) < self._backend.quorum:
            return None
        if answers.agreed_found:
            current = answers.agreed
            if current is not None and current[0] in mine:
                return current  # a quorum accepted our value: it is chosen
        else:
            best, current = ZERO, None
            for answer in answers.oks.values():
                accepted = _ballot(answer.get("a"))
                if accepted > best:
                    best, current = accepted, _value(answer.get("v"))
            if current is not None and current[0] in mine:
                return None  # ours, half-written: the next attempt finishes it
        change(current)  # raises Conflict if somebody else's write is what we now see
        return None

    def _round(self, message: dict[str, Any], deadline: float, agree: bool = False) -> _Round | None:
        """One phase: query the members, collect answers until a quorum is decided; None if out of time.

        Serf gossips queries and sends answers over UDP, so either can be lost: the same
        message (acceptors answer a repeat the same way) is re-sent every ``resend`` seconds
        until a quorum has answered or the deadline passes.
        """
        backend = self._backend
        remaining = deadline - time.monotonic()
        if remaining <= 0.005:
            return None
        client = backend.client(timeout=remaining)
        payload = msgpack.packb(message, use_bin_type=True)
        records: queue.Queue[Any] = queue.Queue()
        oks: dict[str, dict[str, Any]] = {}
        noks: set[str] = set()
        highest = 0
        by_ballot: dict[Ballot, int] = {}
        members, quorum = backend.member_set, backend.quorum
        next_send = 0.0
        decided = False
        linger: float | None = None  # peek: a quorum answered without agreeing; wait briefly for the rest
        while not decided:
            now = time.monotonic()
            if now >= deadline or (linger is not None and now >= linger):
                break
            if now >= next_send:
                try:
                    client.query(QUERY_NAME, payload, filter_nodes=backend.members,
                                 timeout=min(backend.query_timeout, max(0.01, deadline - now)), records=records)
                except SerfRPCError as exc:
                    raise BackendUnavailable(f"serf refused the query: {exc}") from exc
                except SerfError as exc:
                    backend.drop_client(client)
                    raise BackendUnavailable(f"serf agent {backend.host}:{backend.port} unreachable: {exc}") from exc
                next_send = time.monotonic() + backend.resend
            try:
                record = records.get(timeout=max(0.0, min(next_send, deadline, linger or deadline)
                                                   - time.monotonic()))
            except queue.Empty:
                continue
            if record is CLOSED:
                backend.drop_client(client)
                raise BackendUnavailable(f"serf agent {backend.host}:{backend.port} closed the connection")
            if record.get("Type") != "response":
                continue
            node, data = record.get("From", ""), bytes(record.get("Payload") or b"")
            if node not in members:
                log.debug("ignoring an answer from %r, which is not a configured member", node)
                continue
            if node in oks or node in noks:
                continue
            try:
                answer = msgpack.unpackb(data, raw=False)
                ok = answer["ok"]
                promised = _ballot(answer.get("p"))
                accepted = _ballot(answer.get("a"))
                current = _value(answer.get("v")) if message["o"] in ("p", "r") else None
            except Exception as exc:  # noqa: BLE001 - a broken answer is no answer
                log.warning("ignoring a malformed answer from member %r: %s", node, exc)
                continue
            highest = max(highest, promised[0], accepted[0])
            if ok is True:
                oks[node] = answer
            else:
                noks.add(node)
            if agree:
                by_ballot[accepted] = by_ballot.get(accepted, 0) + 1
                if by_ballot[accepted] >= quorum:
                    self._saw(highest)
                    return _Round(oks, highest, False, current, True)
                decided = len(oks) >= len(members)
                if linger is None and len(oks) >= quorum:
                    linger = time.monotonic() + AGREE_LINGER
                continue
            decided = len(oks) >= quorum or len(noks) > len(members) - quorum
            if noks and message["o"] == "p":
                decided = True  # preempted: retry at once with a higher ballot
        self._saw(highest)
        if not oks and not noks and time.monotonic() >= deadline - 0.005:
            return None
        return _Round(oks, highest, bool(noks))


_IDENTITY = object()


# --------------------------------------------------------------------------- backend


def _seconds(params: dict[str, list[str]], key: str, default: float) -> float:
    raw = params.get(key, [None])[-1]
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"gossip URL option {key}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigurationError(f"gossip URL option {key}={raw!r} must be > 0 seconds")
    return value


def _flag(params: dict[str, list[str]], key: str, default: bool) -> bool:
    raw = params.get(key, [None])[-1]
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"gossip URL option {key}={raw!r}: use true or false")


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
        self._acceptor_key: tuple[str, int, str] | None = None
        if acceptor and self.node in self.member_set:
            directory = Path(state_dir) if state_dir else _default_state_dir(self.node)
            if not directory.is_absolute():
                raise ConfigurationError(f"gossip state_dir={state_dir!r} must be an absolute path")
            key = (host, port, str(directory))
            with _ACCEPTORS_GUARD:
                shared = _ACCEPTORS.get(key)
                if shared is None:
                    shared = Acceptor(host, port, auth_key, self.node, directory)
                    _ACCEPTORS[key] = shared
                shared.refs += 1
            self.acceptor, self._acceptor_key = shared, key
            if not shared.connected.wait(5.0):
                log.warning("acceptor for node %s is not connected to its agent yet", self.node)
        elif acceptor:
            log.info("serf node %r is not in members=%s: this process proposes but does not vote", self.node,
                     ",".join(self.members))

    @classmethod
    def from_url(cls, url: str) -> "GossipBackend":
        parts = urlsplit(url)
        if parts.scheme != "gossip":
            raise ConfigurationError(f"not a gossip:// URL: {url!r}")
        params = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(params) - set(cls.OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"unknown gossip URL option(s) {', '.join(unknown)}; known: {', '.join(cls.OPTIONS)}"
            )
        members = [m.strip() for raw in params.get("members", []) for m in raw.split(",") if m.strip()]
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ConfigurationError(f"gossip URL {parts.netloc!r} has a bad port") from None
        auth = params.get("auth_key", [None])[-1] or (unquote(parts.password) if parts.password else None)
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            members=members,
            auth_key=auth,
            query_timeout=_seconds(params, "query_timeout", 1.0),
            state_dir=params.get("state_dir", [None])[-1] or None,
            acceptor=_flag(params, "acceptor", True),
            poll_interval=_seconds(params, "poll_interval", 0.5),
            resend=_seconds(params, "resend", 0.1),
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
        if self.acceptor is not None and self._acceptor_key is not None:
            with _ACCEPTORS_GUARD:
                self.acceptor.refs -= 1
                last = self.acceptor.refs <= 0
                if last:
                    _ACCEPTORS.pop(self._acceptor_key, None)
            if last:
                self.acceptor.stop()
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
