"""The proposer side of the gossip backend: one lock name as a CASPaxos register.

A proposer sends each phase as a serf query filtered to the configured members and counts
the answers of a majority (see :mod:`.acceptor` for what they store). A ``version`` is
the ballot that first wrote the value (``"<counter hex>.<proposer>"``): a proposer that
finishes a half-written value re-accepts it under a new ballot without changing its
version. Reads promise nothing (they would preempt the leader's renewals); an accept
reserves the next ballot for the same proposer, so a leader renews in one round trip.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgpack

from ...errors import BackendUnavailable, ConfigurationError, Conflict
from ...lock import Capabilities, Lock, Versioned
from ...record import LeaderRecord, decode_or_placeholder, encode_record
from .acceptor import QUERY_NAME, ZERO, Ballot, Value, parse_ballot, parse_value, successor, version_of
from .serf import CLOSED, SerfError, SerfRPCError

if TYPE_CHECKING:
    from .backend import GossipBackend

__all__ = ["GossipLock", "CAPABILITIES", "MAX_VALUE_BYTES"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)

#: serf's default query and response size limit is 1024 bytes; keep headroom for framing
MAX_VALUE_BYTES = 700
#: a read whose first quorum of answers disagrees waits this long for the other members,
#: hoping a quorum agrees: a member that holds an unfinished write (a crashed leader's
#: last renewal) would otherwise make reads flip between two versions, and every flip
#: restarts the followers' lease clocks
AGREE_LINGER = 0.15
#: what a change function returns to leave the value as it is
_IDENTITY = object()


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
                accepted = parse_ballot(answer.get("a"))
                if accepted > best:
                    best, value = accepted, parse_value(answer.get("v"))
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
        self.wait_for_change_hinted(version, timeout)

    def wait_for_change_hinted(self, version: str | None, timeout: float) -> Versioned | None:
        """Wait for the local acceptor to take another version; return that value as a hint
        (a record that decodes) - every accept reaches this node's acceptor before any read
        could, and a follower then need not read on every renewal of the leader."""
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
                    return None
            value = acceptor.wait_change(self.name, since, version, deadline)
            if value is None:
                return None
            record = decode_or_placeholder(value[1])
            return None if record.decode_error else Versioned(record, value[0])
        while True:  # not a voter here (or its agent is away): poll
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                got = self.get(min(remaining, max(self._backend.query_timeout, 0.2)))
            except (BackendUnavailable, Conflict):
                got = None
            else:
                if (got.version if got else None) != version:
                    return None
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
                looked = self._look(change, mine, deadline)
                if looked is not None:
                    return looked
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
                accepted = parse_ballot(answer.get("a"))
                accepted_ballots.add(accepted)
                if accepted > best_ballot or (accepted == best_ballot and current is None):
                    best_ballot, current = accepted, parse_value(answer.get("v"))
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
                accepted = parse_ballot(answer.get("a"))
                if accepted > best:
                    best, current = accepted, parse_value(answer.get("v"))
            if current is not None and current[0] in mine:
                return None  # ours, half-written: the next attempt finishes it
        change(current)  # raises Conflict if somebody else's write is what we now see
        return None

    def _round(self, message: dict[str, Any], deadline: float, agree: bool = False) -> _Round | None:
        """One phase: query the members, collect answers until a quorum is decided; None if out of time.

        Serf gossips queries and sends answers over UDP, so either can be lost: the same
        message (acceptors answer a repeat the same way) is re-sent every ``resend`` seconds
        until a quorum has answered or the deadline passes.

        A read (``"r"``, which promises nothing) takes this node's answer straight from the
        local acceptor's store, under the same file lock its acceptor answers under, and
        asks only the other members: the same answer the local acceptor would give to a
        query arriving now (after the read began, which is all the read's argument needs),
        without the query, the answer and the response travelling through the local agent.
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
        targets = backend.members
        next_send = 0.0
        decided = False
        linger: float | None = None  # peek: a quorum answered without agreeing; wait briefly for the rest

        def consider(node: str, answer: Any) -> _Round | None:
            """Count one member's answer; a _Round when a read is decided by it."""
            nonlocal highest, decided, linger
            try:
                ok = answer["ok"]
                promised = parse_ballot(answer.get("p"))
                accepted = parse_ballot(answer.get("a"))
                current = parse_value(answer.get("v")) if message["o"] in ("p", "r") else None
            except Exception as exc:  # noqa: BLE001 - a broken answer is no answer
                log.warning("ignoring a malformed answer from member %r: %s", node, exc)
                return None
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
                return None
            decided = len(oks) >= quorum or len(noks) > len(members) - quorum
            if noks and message["o"] == "p":
                decided = True  # preempted: retry at once with a higher ballot
            return None

        acceptor = backend.acceptor
        if message["o"] == "r" and acceptor is not None and len(targets) > 1:
            try:
                local, _ = acceptor.store.handle(message)
            except BackendUnavailable:  # the store is closed: ask the agent like the others
                pass
            else:
                targets = [m for m in targets if m != acceptor.node]
                done = consider(acceptor.node, local)
                if done is not None:
                    return done
        while not decided:
            now = time.monotonic()
            if now >= deadline or (linger is not None and now >= linger):
                break
            if now >= next_send:
                try:
                    client.query(QUERY_NAME, payload, filter_nodes=targets, wait=False,
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
            kind = record.get("Type")
            if kind == "error":  # the agent refused the query (answered instead of an exception)
                raise BackendUnavailable(f"serf refused the query: serf query: {record.get('Error')}")
            if kind != "response":
                continue
            node, data = record.get("From", ""), bytes(record.get("Payload") or b"")
            if node not in members:
                log.debug("ignoring an answer from %r, which is not a configured member", node)
                continue
            if node in oks or node in noks:
                continue
            try:
                answer = msgpack.unpackb(data, raw=False)
            except Exception as exc:  # noqa: BLE001 - a broken answer is no answer
                log.warning("ignoring a malformed answer from member %r: %s", node, exc)
                continue
            done = consider(node, answer)
            if done is not None:
                return done
        self._saw(highest)
        if not oks and not noks and time.monotonic() >= deadline - 0.005:
            return None
        return _Round(oks, highest, bool(noks))
