"""The election state machine, without I/O.

In the spirit of h11: :class:`ElectionCore` only decides. A driver (the thread driver in
:mod:`celery_leader.election`, the asyncio driver in :mod:`celery_leader.aio`) asks it for
the next action, performs that action against a :class:`~celery_leader.lock.Lock`, and
reports the outcome. Every rule of DESIGN.md section 4 lives here, so that it can be
tested with a fake clock, and both drivers behave the same.

Safety, in short:

* A follower notes the monotonic time at which it *received* a changed record and only
  considers the lease expired ``record.lease_duration`` after that. Remote timestamps are
  never compared with the local clock.
* The leader's deadline is the monotonic time at which it *sent* its last successful
  write plus ``lease_duration * (1 - 2 * max_drift)``. Any follower's clock only starts
  after that write landed, so the leader stops before a follower may take over.
* Every write is a compare-and-swap against the version last read or written.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Mapping, Protocol

from .lock import BackendUnavailable, ConfigurationError, Conflict, Versioned
from .record import ANY_HOLDER, LeaderRecord, printable

__all__ = [
    "Timing",
    "ElectionCore",
    "Clock",
    "SystemClock",
    "Read",
    "Create",
    "Update",
    "Wait",
    "Finished",
    "StartedLeading",
    "StoppedLeading",
    "NewLeader",
    "validate_identity",
    "validate_name",
]

log = logging.getLogger(__name__)

#: the longest timing value accepted (seconds): a lease longer than a day is a typo, and an
#: enormous one (``1e300``) would lock every other candidate out for ever
MAX_SECONDS = 86400.0
#: the shortest ``retry_period``: below this a candidate only burns CPU and backend calls
MIN_RETRY_PERIOD = 0.01

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


#: every core's default clock (stateless: one is enough, not one object per election)
SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class Timing:
    """client-go's timing parameters (seconds), validated at construction."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: bound on how far any candidate's clock *rate* may differ from true time
    max_drift: float = 0.01
    #: followers poll every ``retry_period * uniform(1, jitter)``; leaders renew every
    #: ``retry_period * uniform(1 - min(0.5, (jitter - 1) / 2), 1)``
    jitter: float = 1.2

    def __post_init__(self) -> None:
        for key in ("lease_duration", "renew_deadline", "retry_period"):
            value = getattr(self, key)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not 0 < value <= MAX_SECONDS
            ):
                raise ConfigurationError(
                    f"{key} must be a finite number of seconds greater than 0 and at most {MAX_SECONDS:g} "
                    f"(one day), got {value!r}"
                )
        if self.retry_period < MIN_RETRY_PERIOD:
            raise ConfigurationError(
                f"retry_period must be at least {MIN_RETRY_PERIOD} s, got {self.retry_period!r}; "
                "a shorter period only burns CPU and backend calls"
            )
        for key in ("max_drift", "jitter"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigurationError(f"{key} must be a finite number, got {value!r}")
        if not 0 <= self.max_drift < 0.25:
            raise ConfigurationError(f"max_drift must be in [0, 0.25), got {self.max_drift!r}")
        if not 1.0 <= self.jitter <= 10.0:
            raise ConfigurationError(f"jitter must be in [1.0, 10.0], got {self.jitter!r}")
        if not self.lease_duration > self.renew_deadline:
            raise ConfigurationError(
                f"lease_duration ({self.lease_duration}) must be greater than renew_deadline "
                f"({self.renew_deadline}): the leader must give up before its lease runs out"
            )
        if not self.renew_deadline > 1.2 * self.retry_period:
            raise ConfigurationError(
                f"renew_deadline ({self.renew_deadline}) must be greater than 1.2 x retry_period "
                f"({self.retry_period}), so that a leader can retry a failed renewal; "
                "lower retry_period or raise renew_deadline"
            )
        if not self.renew_deadline < self.safe_lease:
            raise ConfigurationError(
                f"renew_deadline ({self.renew_deadline}) leaves no time to stop the work before the "
                f"lease deadline ({self.safe_lease:.3f} = lease_duration x (1 - 2 x max_drift)); "
                "raise lease_duration or lower renew_deadline"
            )

    @cached_property
    def safe_lease(self) -> float:
        """How long after *sending* a successful write the leader may still lead."""
        return self.lease_duration * (1.0 - 2.0 * self.max_drift)

    @cached_property
    def op_timeout(self) -> float:
        """Timeout of one backend call (client-go: max(1 s, renew_deadline / 2), scaled for short leases)."""
        return min(max(self.retry_period, self.renew_deadline / 2.0), self.renew_deadline)


def validate_identity(identity: object) -> str:
    if not isinstance(identity, str) or not identity.strip():
        raise ConfigurationError("identity must be a non-empty string (default: <hostname>-<pid>-<random>)")
    # printable only: no control characters (C0, DEL, C1), line or paragraph separators,
    # format characters or lone surrogates; an identity ends up in logs, status and terminals
    if identity == ANY_HOLDER or not identity.isprintable() or len(identity) > 253:
        raise ConfigurationError(
            f"identity {identity!r} is not usable: use printable text (no control characters), at most 253 characters"
        )
    return identity


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"election name {name!r} is not valid: use letters, digits, '.', '-' and '_' "
            "(start and end with a letter or digit, at most 253 characters)"
        )
    return name


# --- actions the driver performs -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    timeout: float


@dataclass(frozen=True, slots=True)
class Create:
    record: LeaderRecord
    timeout: float


@dataclass(frozen=True, slots=True)
class Update:
    record: LeaderRecord
    expected_version: str
    timeout: float
    #: a release: the driver first lets the ended term's work finish
    release: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep until ``until`` (monotonic); with ``version``, return early when it changes."""

    until: float
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    pass


Action = Read | Create | Update | Wait | Finished


# --- what happened, for the driver to announce ------------------------------------------


@dataclass(frozen=True, slots=True)
class StartedLeading:
    term: int
    token: int


@dataclass(frozen=True, slots=True)
class StoppedLeading:
    term: int
    reason: str


@dataclass(frozen=True, slots=True)
class NewLeader:
    identity: str


Event = StartedLeading | StoppedLeading | NewLeader


class Phase(Enum):
    FOLLOWING = "following"
    LEADING = "leading"
    RELEASING = "releasing"
    DONE = "done"


@dataclass(slots=True)
class _InFlight:
    kind: str  # "read" | "acquire" | "renew" | "release"
    sent_at: float
    term: int
    record: LeaderRecord | None = None
    #: the extra-key request (see :meth:`ElectionCore.request_extra`) this write carries
    extra_seq: int = 0
    #: a renewal that moves only the renew time of the term's record (see :attr:`ElectionCore.held`)
    plain: bool = False


@dataclass(slots=True, eq=False)
class ElectionCore:
    """Decides what an elector does next. Not thread-safe: drivers serialise calls.

    Slotted: a process may hold ten thousand of these (issue 21), and an instance dict of
    this many attributes costs more than a kilobyte each.
    """

    name: str
    identity: str
    timing: Timing = field(default_factory=Timing)
    clock: Clock = SYSTEM_CLOCK
    release_on_cancel: bool = True
    rand: Callable[[], float] = random.random
    # the state below is set in __post_init__ (declared here so that it has slots)
    phase: Phase = field(init=False, repr=False)
    #: what happened since the driver last asked (a tuple: the shared empty one costs an idle
    #: election nothing, where an empty list per election is one more object for every full GC)
    events: tuple[Event, ...] = field(init=False, repr=False)
    # what was last observed: a record and its version, kept apart (see :attr:`observed`)
    _obs_record: LeaderRecord | None = field(init=False, repr=False)
    _obs_version: str = field(init=False, repr=False)
    #: the observed record's renew time when it differs from ``_obs_record``'s (see :attr:`held`)
    _obs_renew: float = field(init=False, repr=False)
    observed_at: float = field(init=False, repr=False)
    max_seen_transitions: int = field(init=False, repr=False)
    reported_leader: str | None = field(init=False, repr=False)
    last_written_version: str | None = field(init=False, repr=False)
    # what this leader last wrote (or read as its own): a record and the renew time of its
    # last write, kept apart (see :attr:`held`)
    _held: LeaderRecord | None = field(init=False, repr=False)
    _held_renew: float = field(init=False, repr=False)
    term: int = field(init=False, repr=False)
    token: int | None = field(init=False, repr=False)
    deadline: float = field(init=False, repr=False)
    last_ok_sent: float = field(init=False, repr=False)
    #: when the current term ends unless a write succeeds first (monotonic):
    #: ``renew_deadline`` after the send time of the last successful write, which is always
    #: before the lease deadline (validated); the gap is the shutdown window in which the
    #: term's work must stop. It holds even while a call is in flight. Kept (set with
    #: ``deadline`` and ``last_ok_sent`` in :meth:`_confirmed`), not computed: it is read
    #: several times per renewal
    term_end: float = field(init=False, repr=False)
    next_renew: float = field(init=False, repr=False)
    _need_read: bool = field(init=False, repr=False)
    _retry_at: float = field(init=False, repr=False)
    _inflight: _InFlight | None = field(init=False, repr=False)
    _stop_requested: bool = field(init=False, repr=False)
    _step_down_requested: bool = field(init=False, repr=False)
    _release_started: float = field(init=False, repr=False)
    _release_then: Phase = field(init=False, repr=False)
    _no_acquire_before: float = field(init=False, repr=False)
    _vanished_hold: float = field(init=False, repr=False)
    _failures: int = field(init=False, repr=False)
    _unanswered_writes: tuple[LeaderRecord, ...] = field(init=False, repr=False)
    _reported_garbage: str | None = field(init=False, repr=False)
    _extra_pending: dict[str, Any] = field(init=False, repr=False)
    _extra_requested: int = field(init=False, repr=False)
    extra_written: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_identity(self.identity)
        self.phase = Phase.FOLLOWING
        self.events: tuple[Event, ...] = ()
        # what we last observed, and when (monotonic, on receipt) it last changed
        self._obs_record: LeaderRecord | None = None
        self._obs_version = ""
        self._obs_renew = 0.0
        self.observed_at: float = 0.0
        self.max_seen_transitions = 0
        self.reported_leader: str | None = None
        # our own writes
        self.last_written_version: str | None = None
        self._held: LeaderRecord | None = None
        self._held_renew = 0.0
        # the current (or last) term
        self.term = 0
        self.token: int | None = None
        self.deadline = 0.0
        self.last_ok_sent = 0.0
        self.term_end = 0.0
        self.next_renew = 0.0
        # requests and guards
        self._need_read = True
        self._retry_at = 0.0
        self._inflight: _InFlight | None = None
        self._stop_requested = False
        self._step_down_requested = False
        self._release_started = 0.0
        self._release_then = Phase.DONE
        self._no_acquire_before = 0.0
        self._vanished_hold = 0.0
        self._failures = 0
        self._unanswered_writes: tuple[LeaderRecord, ...] = ()
        self._reported_garbage: str | None = None
        # extra record keys the leader was asked to write (once-per-slot marks)
        self._extra_pending: dict[str, Any] = {}
        self._extra_requested = 0
        self.extra_written = 0

    # --- queries ---------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.phase is Phase.LEADING

    def is_leader(self) -> bool:
        """Leading, and the term's end has not passed (even if nobody noticed yet)."""
        return self.phase is Phase.LEADING and self.clock.monotonic() < self.term_end

    @property
    def observed(self) -> Versioned | None:
        """The record last read or written, with its version (``None``: absent, or none yet).

        Made on demand: the core keeps the two parts in its own slots, because a
        ``Versioned`` object per renewal would live a retry period and be promoted to the
        oldest GC generation, whose full collections walk every election (issue 21).
        """
        rec = self._obs_record
        if rec is None:
            return None
        if rec.renew_time != self._obs_renew:
            rec = rec.renewed(self._obs_renew, rec.lease_duration)
        return Versioned(rec, self._obs_version)

    @property
    def held(self) -> LeaderRecord | None:
        """The record of this leader's last successful write (or last read of its own record).

        Made on demand, like :attr:`observed`: a renewal changes only the renew time, so the
        core keeps the record of the term (replaced only when its content changes: extra
        keys, a read) and the renew time of the last renewal apart. A record object per
        renewal kept for a retry period would be promoted to the oldest GC generation, and
        the full collections that promotion triggers walk every election of the process
        (issue 21); the record a renewal sends dies young instead.
        """
        rec = self._held
        if rec is None or rec.renew_time == self._held_renew:
            return rec
        return rec.renewed(self._held_renew, rec.lease_duration)

    def _hold(self, rec: LeaderRecord) -> None:
        self._held, self._held_renew = rec, rec.renew_time

    @property
    def observed_holder(self) -> str | None:
        rec = self._obs_record
        if rec is None or rec.decode_error:
            return None
        return rec.holder or None

    def may_hold(self) -> bool:
        """Could the lock be ours right now (leading, releasing, a write in flight, our record)?

        ``stop()`` waits for the driver to finish whenever this is true, so that it never
        returns while the lock may still be held by this process.
        """
        if self.phase in (Phase.LEADING, Phase.RELEASING):
            return True
        flight = self._inflight
        return (flight is not None and flight.kind != "read") or self._may_hold()

    @property
    def pending_call(self) -> object | None:
        """An opaque handle of the action in flight (``None``: none).

        A driver that hands an action's outcome back later compares it with the handle it
        noted when it got the action, so that an answer to an abandoned call (reported as
        failed, or overtaken by a newer action) is never applied.
        """
        return self._inflight

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, ()
        return list(events)

    # --- requests --------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested = True

    def request_step_down(self) -> None:
        if self.phase is Phase.LEADING:
            self._step_down_requested = True

    def request_extra(self, updates: Mapping[str, Any]) -> int | None:
        """Ask the leader to write ``updates`` into the record's extra keys at once.

        The keys go out with the next renewal, which is sent now: a compare-and-swap
        against our own last write, so it lands only while nobody else has written.
        Returns a request number; :attr:`extra_written` reaches it once a write carrying
        the keys succeeded in this term. ``None`` when not leading.
        """
        if self.phase is not Phase.LEADING:
            return None
        self._extra_pending.update(updates)
        self._extra_requested += 1
        self.next_renew = min(self.next_renew, self.clock.monotonic())
        return self._extra_requested

    def check_deadline(self) -> bool:
        """End the term if its end (:attr:`term_end`) has passed; True if it did."""
        if self.phase is Phase.LEADING:
            now = self.clock.monotonic()
            if now >= self.deadline:
                self._end_term("the lease deadline passed before a renewal succeeded")
                return True
            if now >= self.term_end:
                self._end_term(f"no renewal succeeded for {self.timing.renew_deadline} s (renew_deadline)")
                return True
        return False

    # --- the decision ----------------------------------------------------------------

    def next_action(self, early: float = 0.0) -> Action:
        """What to do now. ``early``: a leader's renewal may go out up to this many seconds
        before its time (a driver that renews many elections together gathers the ones
        due soon; renewing early only shortens the period, the term counts from the send)."""
        now = self.clock.monotonic()
        if self.phase is Phase.LEADING and now < self.term_end and now >= self._retry_at and not self._stop_requested:
            # what the checks below come to for a leader whose term goes on (term_end is never
            # after the deadline): the common call, thousands a second in a process with many
            # elections (issue 21)
            return self._leader_action(now, early)
        self.check_deadline()
        if self.phase is Phase.DONE:
            return Finished()
        if self.phase is Phase.RELEASING:
            return self._release_action(now)
        if self._stop_requested:
            return self._begin_stop(now)
        if now < self._retry_at:
            return Wait(self._retry_at)
        if self.phase is Phase.LEADING:
            return self._leader_action(now, early)
        return self._follower_action(now)

    def _begin_stop(self, now: float) -> Action:
        was_leading = self.phase is Phase.LEADING
        if was_leading:
            self._end_term("stopped", requested=True)
        if self.release_on_cancel and (was_leading or self._may_hold()):
            return self._begin_release(now, then=Phase.DONE)
        self.phase = Phase.DONE
        return Finished()

    def _may_hold(self) -> bool:
        """Is the record we last saw ours: our last answered write, or one whose answer was lost?"""
        rec = self._obs_record
        return (
            rec is not None
            and rec.holder == self.identity
            and (self._obs_version == self.last_written_version or self._unanswered(rec))
        )

    def _leader_action(self, now: float, early: float = 0.0) -> Action:
        held = self._held
        assert held is not None
        if self._step_down_requested or held.preferred_holder not in ("", self.identity):
            preferred = held.preferred_holder
            self._end_term("stepped down" + (f" in favour of {preferred}" if preferred not in ("", ANY_HOLDER) else ""), requested=True)
            if preferred in ("", ANY_HOLDER):
                # give the others a head start: do not take it back for one lease
                self._no_acquire_before = max(self._no_acquire_before, now + self.timing.lease_duration)
            return self._begin_release(now, then=Phase.FOLLOWING)
        if self._need_read:
            return self._read(now)
        if now + early < self.next_renew:
            return Wait(self.next_renew)
        record = held.renewed(self.clock.time(), self.timing.lease_duration)
        if self._extra_pending:
            record = record.evolve(extra={**held.extra, **self._extra_pending})
        assert self.last_written_version is not None
        plain = not self._extra_pending and held.lease_duration == self.timing.lease_duration
        self._inflight = _InFlight("renew", now, self.term, record, extra_seq=self._extra_requested, plain=plain)
        return Update(record, self.last_written_version, self._timeout(now))

    def _follower_action(self, now: float) -> Action:
        if self._need_read:
            return self._read(now)
        obs = self.observed
        if obs is None:
            expires = max(self._no_acquire_before, self.observed_at + self._vanished_hold)
            if now >= expires:
                record = self._term_record(None)
                self._inflight = _InFlight("acquire", now, self.term + 1, record)
                return Create(record, self._timeout(now))
        else:
            expires = self._expiry(obs, now)
        if obs is not None and now >= expires:
            record = self._term_record(obs.record)
            self._inflight = _InFlight("acquire", now, self.term + 1, record)
            return Update(record, obs.version, self._timeout(now))
        poll = now + self.timing.retry_period * (1.0 + (self.timing.jitter - 1.0) * self.rand())
        # wake at the exact expiry moment, or at the next poll, or on a change
        self._need_read = True
        return Wait(min(expires, poll), obs.version if obs is not None else None)

    def _expiry(self, obs: Versioned, now: float) -> float:
        """When this follower may try to take the lock (monotonic)."""
        rec = obs.record
        lease = rec.lease_duration if rec.lease_duration > 0 else self.timing.lease_duration
        if rec.decode_error:
            expires = self.observed_at + self.timing.lease_duration
        elif rec.holder == "":
            deferring = rec.preferred_holder not in ("", ANY_HOLDER, self.identity)
            expires = self.observed_at + self.timing.lease_duration if deferring else now
        elif rec.holder == self.identity and (obs.version == self.last_written_version or self._unanswered(rec)):
            # our own record from an ended term, or a write of ours whose answer was lost:
            # nobody wrote since, so retake it now (compare-and-swap, new token)
            expires = now
        else:
            expires = self.observed_at + lease
        return max(expires, self._no_acquire_before)

    def _term_record(self, previous: LeaderRecord | None) -> LeaderRecord:
        wall = self.clock.time()
        base = previous if previous is not None and not previous.decode_error else LeaderRecord()
        return LeaderRecord(
            holder=self.identity,
            lease_duration=self.timing.lease_duration,
            acquire_time=wall,
            renew_time=wall,
            transitions=max(base.transitions, self.max_seen_transitions) + 1,
            extra=dict(base.extra),
        )

    def _read(self, now: float) -> Read:
        self._inflight = _InFlight("read", now, self.term)
        return Read(self._timeout(now))

    def _timeout(self, now: float) -> float:
        timeout = self.timing.op_timeout
        if self.phase is Phase.LEADING:
            timeout = min(timeout, max(0.001, self.term_end - now))
        return timeout

    # --- release ---------------------------------------------------------------------

    def _begin_release(self, now: float, then: Phase) -> Action:
        self.phase = Phase.RELEASING
        self._release_then = then
        self._release_started = now
        self._need_read = True
        self._retry_at = 0.0
        return self._release_action(now)

    def _release_action(self, now: float) -> Action:
        if now - self._release_started >= self.timing.renew_deadline:
            log.warning("%s: could not release the lock within renew_deadline; it will expire", self.name)
            return self._finish_release()
        if now < self._retry_at:
            return Wait(self._retry_at)
        if self._need_read:
            return self._read(now)
        obs = self.observed
        if obs is None or obs.record.decode_error or obs.record.holder != self.identity:
            # not ours (any more): a fault ended the term first, or our release landed but
            # its answer was lost; either way said, so a stop is never silent about the lock
            state = "absent" if obs is None else "unreadable" if obs.record.decode_error else (
                f"held by {printable(obs.record.holder)}" if obs.record.holder else "free")
            log.info("%s: nothing to release: the lock is %s", self.name, state)
            return self._finish_release()
        rec = obs.record
        preferred = rec.preferred_holder if rec.preferred_holder not in (ANY_HOLDER, self.identity) else ""
        record = rec.evolve(holder="", renew_time=self.clock.time(), preferred_holder=preferred)
        self._inflight = _InFlight("release", now, self.term, record)
        return Update(record, obs.version, self._timeout(now), release=True)

    def _finish_release(self) -> Action:
        self.phase = self._release_then
        self._need_read = True
        if self.phase is Phase.DONE:
            return Finished()
        return self.next_action()

    # --- outcomes --------------------------------------------------------------------

    def read_done(self, result: Versioned | None) -> None:
        now = self.clock.monotonic()
        self.check_deadline()  # a term whose deadline passed is over, whatever the answer says
        self._inflight = None
        self._need_read = False
        self._retry_at = 0.0
        self._recovered()
        if result is None:
            self._observe(None, "", now)
        else:
            self._observe(result.record, result.version, now)
        if self.phase is Phase.LEADING:
            obs = self.observed
            if obs is not None and not obs.record.decode_error and obs.record.holder == self.identity:
                # still ours; somebody else wrote (e.g. a step-down request): renew at once
                self._hold(obs.record)
                self.last_written_version = obs.version
                self.next_renew = now
            else:
                who = printable(self.observed_holder or "nobody")
                self._end_term(f"the lock now belongs to {who}")

    def write_done(self, version: str) -> None:
        now = self.clock.monotonic()
        flight = self._inflight
        if (
            flight is not None
            and flight.plain
            and flight.term == self.term
            and self.phase is Phase.LEADING
            and now < self.term_end
            and not self._failures
            and not self._unanswered_writes
        ):
            self._plain_renewal_done(flight, version, now)
            return
        self.check_deadline()  # a late renewal must not revive a term that already ended
        flight, self._inflight = self._inflight, None
        assert flight is not None and flight.record is not None
        self._retry_at = 0.0
        self._recovered()
        if self._unanswered_writes:
            # (the shared empty tuple, not a new empty list per renewal: that would live a retry
            # period and be promoted to the oldest GC generation, whose full collections walk
            # every election)
            self._unanswered_writes = ()
        self.last_written_version = version
        record = flight.record
        # a plain renewal: the record of the term stays, only its renew time moves (see :attr:`held`)
        plain = flight.kind == "renew" and self._held is not None and self._renews(self._held, record)
        if plain:
            self._observe(self._held, version, now, record.renew_time)
        else:
            self._observe(record, version, now)
        if flight.kind == "release":
            log.info("%s: released the lock", self.name)
            self._finish_release_state()
            return
        if flight.kind == "renew":
            if self.phase is Phase.LEADING and flight.term == self.term:
                if plain:
                    self._held_renew = record.renew_time
                else:
                    self._hold(record)  # the renewal carried new content (extra keys)
                self._confirmed(flight.sent_at)
                self.next_renew = flight.sent_at + self._renew_period()
                if flight.extra_seq > self.extra_written:
                    self.extra_written = flight.extra_seq
                    if flight.extra_seq == self._extra_requested:
                        self._extra_pending.clear()
            return
        # an acquisition
        self._hold(record)
        deadline = flight.sent_at + self.timing.safe_lease
        gives_up = flight.sent_at + self.timing.renew_deadline
        if self.phase is Phase.FOLLOWING and not self._stop_requested and now < min(deadline, gives_up):
            self.term = flight.term
            self.token = flight.record.transitions
            self.phase = Phase.LEADING
            self._confirmed(flight.sent_at)
            self.next_renew = flight.sent_at + self._renew_period()
            self._step_down_requested = False
            self._extra_pending.clear()
            self.extra_written = self._extra_requested
            self.events += (StartedLeading(self.term, self.token),)
            log.info("%s: %s started leading (token %d)", self.name, self.identity, self.token)

    def _plain_renewal_done(self, flight: _InFlight, version: str, now: float) -> None:
        """:meth:`write_done` of a steady leader's plain renewal, in the term it was sent in
        and before the term's end: what the general path comes to then, kept short because
        a process with many elections runs it thousands of times a second (issue 21)."""
        assert flight.record is not None and self._held is not None
        renew = flight.record.renew_time
        self._inflight = None
        self._retry_at = 0.0
        self.last_written_version = version
        # what _observe notes of our own record: it changed now (same holder, same token)
        if version != self._obs_version or self._obs_record is None:
            self.observed_at = now
        self._obs_record, self._obs_version, self._obs_renew = self._held, version, renew
        self._vanished_hold = 0.0
        self._held_renew = renew
        self._confirmed(flight.sent_at)
        self.next_renew = flight.sent_at + self._renew_period()
        if flight.extra_seq > self.extra_written:
            self.extra_written = flight.extra_seq

    def _confirmed(self, sent_at: float) -> None:
        """A write sent at ``sent_at`` succeeded: the lease and the term count from then."""
        self.deadline = sent_at + self.timing.safe_lease
        self.last_ok_sent = sent_at
        self.term_end = min(self.deadline, sent_at + self.timing.renew_deadline)

    def _renew_period(self) -> float:
        """``retry_period x uniform(1 - s, 1)`` with ``s = min(0.5, (jitter - 1) / 2)``: a
        renewal is never later than one retry period, and elections started together drift
        apart instead of renewing in lockstep (default: 0.9-1.0 x retry_period)."""
        spread = min(0.5, 0.5 * (self.timing.jitter - 1.0))
        return self.timing.retry_period * (1.0 - spread * self.rand())

    def _unanswered(self, rec: LeaderRecord) -> bool:
        """Is ``rec`` one of our writes that failed without an answer (and may have landed)?"""

        def key(r: LeaderRecord) -> tuple[str, int, int, int]:
            return (r.holder, r.transitions, round(r.acquire_time * 1000), round(r.renew_time * 1000))

        return any(key(rec) == key(w) for w in self._unanswered_writes)

    def _recovered(self) -> None:
        if self._failures:
            log.info("%s: backend answers again after %d failed calls", self.name, self._failures)
            self._failures = 0

    def _finish_release_state(self) -> None:
        self.phase = self._release_then
        self._need_read = self.phase is not Phase.DONE

    def failed(self, exc: BaseException) -> None:
        """The in-flight action raised ``exc``."""
        now = self.clock.monotonic()
        self.check_deadline()
        flight, self._inflight = self._inflight, None
        kind = flight.kind if flight else "?"
        if flight is not None and flight.record is not None and not isinstance(exc, Conflict):
            # the write may have landed even though no answer came: recognise it if seen
            self._unanswered_writes = (*self._unanswered_writes[-3:], flight.record)
        if isinstance(exc, Conflict):
            log.debug("%s: %s lost a race (%s)", self.name, kind, exc)
            self._need_read = True
            return
        if isinstance(exc, BackendUnavailable):
            # the first failure of an outage is a warning; the repeats are noise
            self._failures += 1
            level = logging.WARNING if self._failures == 1 or self.phase is Phase.LEADING else logging.DEBUG
            log.log(level, "%s: %s failed: %s", self.name, kind, exc)
        else:
            log.error("%s: %s failed unexpectedly: %r", self.name, kind, exc)
        if self.phase is Phase.LEADING:
            if now - self.last_ok_sent >= self.timing.renew_deadline:
                self._end_term(f"renewals failed for {self.timing.renew_deadline} s (renew_deadline)")
                self._need_read = True
            elif kind == "renew":
                self.next_renew = now + self.timing.retry_period
                return
        # reads, acquisitions and releases: back off, then read again
        self._need_read = True
        self._retry_at = now + self.timing.retry_period

    def wait_done(self) -> None:
        """A :class:`Wait` finished (its time came, the record changed, or a request woke it)."""

    def hinted(self, hint: Versioned) -> bool:
        """A follower's :class:`Wait` ended with a change notification that carried ``hint``
        (:meth:`Lock.wait_for_change_hinted`); True if it stands in for the read.

        Only a renewal of the term this follower already follows: the same holder, token,
        acquire time, lease, preference and extra keys, a renew time no older, another
        version. Then the change is noted now, which is after the hinted write was sent,
        so the lease clock starts no earlier than a read's would; the next action is the
        next wait (or, once that lease runs out, a compare-and-swap against the hinted
        version, which fails unless it is the stored one). Anything else (a new holder,
        a release, garbage, a stop or a back-off pending) returns False: read as usual.
        """
        rec, obs = hint.record, self._obs_record
        now = self.clock.monotonic()
        if (
            self.phase is not Phase.FOLLOWING
            or self._stop_requested
            or self._inflight is not None
            or not self._need_read
            or now < self._retry_at
            or obs is None
            or not obs.holder
            or obs.holder == self.identity
            or hint.version == self._obs_version
            or not self._renews(obs, rec)
            or rec.renew_time < self._obs_renew
        ):
            return False
        self._need_read = False
        self._observe(obs, hint.version, now, rec.renew_time)  # the term's record, a new renew time
        return True

    # --- bookkeeping -----------------------------------------------------------------

    @staticmethod
    def _renews(held: LeaderRecord, record: LeaderRecord) -> bool:
        """Is ``record`` ``held`` with only its renew time moved (what a plain renewal writes)?"""
        return (
            (record.extra is held.extra or record.extra == held.extra)
            and record.lease_duration == held.lease_duration
            and record.holder == held.holder
            and record.transitions == held.transitions
            and record.acquire_time == held.acquire_time
            and record.preferred_holder == held.preferred_holder
            and record.decode_error is None
            and held.decode_error is None
        )

    def _observe(self, rec: LeaderRecord | None, version: str, now: float, renew: float | None = None) -> None:
        """Note what a read or write found (``rec`` None: the lock object is absent; ``renew``:
        its renew time, when it differs from ``rec``'s own)."""
        previous = self._obs_record
        appeared_or_vanished = (rec is None) != (previous is None)
        if appeared_or_vanished or (rec is not None and previous is not None and version != self._obs_version):
            self.observed_at = now
        self._obs_record, self._obs_version = rec, version if rec is not None else ""
        self._obs_renew = renew if renew is not None else rec.renew_time if rec is not None else 0.0
        if rec is None:
            if previous is not None and (previous.holder or previous.decode_error):
                # a held lock object vanished (deleted by hand, evicted): its holder may still
                # lead until its lease runs out, so count it as held for that long from now
                lease = previous.lease_duration or self.timing.lease_duration
                self._vanished_hold = max(lease, self.timing.lease_duration if previous.decode_error else 0.0)
            return
        self._vanished_hold = 0.0
        # an undecodable placeholder may still carry the backend's last known token
        self.max_seen_transitions = max(self.max_seen_transitions, rec.transitions)
        if rec.decode_error:
            if self._reported_garbage != version:
                self._reported_garbage = version
                log.error(
                    "%s: the lock holds something that is not a leader record (%s); treating it as held "
                    "until it has been unchanged for %s s, then overwriting it",
                    self.name,
                    rec.decode_error,
                    self.timing.lease_duration,
                )
            return
        if rec.holder and rec.holder != self.reported_leader:
            self.reported_leader = rec.holder
            self.events += (NewLeader(rec.holder),)

    def _end_term(self, reason: str, requested: bool = False) -> None:
        if self.phase is not Phase.LEADING:
            return
        self.phase = Phase.FOLLOWING
        self._need_read = True
        self._extra_pending.clear()
        # an involuntary end: do not start a new term before the old one's work is surely over
        self._no_acquire_before = max(self._no_acquire_before, self.deadline)
        self.events += (StoppedLeading(self.term, reason),)
        log.log(
            logging.INFO if requested else logging.WARNING,
            "%s: %s stopped leading (token %s): %s",
            self.name,
            self.identity,
            self.token,
            reason,
        )
