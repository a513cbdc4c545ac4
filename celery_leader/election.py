"""The thread driver: runs an :class:`~celery_leader.core.ElectionCore` against a lock.

One daemon thread per election performs the core's decisions; callbacks run elsewhere so
that user code can never delay a renewal:

* ``on_started_leading(leadership)`` runs in a new thread per term (like client-go's
  ``go OnStartedLeading(ctx)``); ``leadership.lost`` is set when the term ends.
* ``on_stopped_leading()`` (once per started term) and ``on_new_leader(identity)`` run in
  order on a notifier thread.
* A process-wide watchdog ends a term at its end (``renew_deadline`` after the last
  successful write was sent) even while a backend call hangs.
* A term's :class:`Leadership` is created, and ended, under the election's mutex in the
  same step as the core's state changes, so a term can never end before its Leadership
  exists (its ``lost`` would then never be set). A term that has already ended never starts
  its ``on_started_leading``.

Before a *graceful* release (stop, step-down) the driver waits for the term's
``on_started_leading`` to return, up to the term's deadline, so the work has stopped
before anybody else can lead.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import queue
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .core import (
    Create,
    ElectionCore,
    Finished,
    NewLeader,
    Read,
    StartedLeading,
    StoppedLeading,
    Timing,
    Update,
    Wait,
)
from .errors import ConfigurationError, ElectionStopped
from .lock import Backend, Lock, Versioned
from .registry import open_backend

__all__ = ["Election", "Leadership", "default_identity"]

log = logging.getLogger(__name__)


def default_identity() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in ``status``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class BaseLeadership:
    """One term of leadership. Hand ``token`` to the work as its fencing token.

    ``lost`` (a :class:`threading.Event` or, in the asyncio driver, an :class:`asyncio.Event`)
    is set when the term ends.
    """

    lost: Any

    def __init__(self, election: BaseElection, term: int, token: int) -> None:
        self._election = election
        self.term = term
        self.token = token
        self.name = election.name
        self.identity = election.identity
        self._final_deadline: float | None = None

    @property
    def deadline(self) -> float:
        """Monotonic time of the lease deadline: the work must have stopped by then.

        While the term lasts this moves on with every renewal; once the term has ended it is
        fixed, and the time left is the term's shutdown window.
        """
        if self._final_deadline is not None:
            return self._final_deadline
        return self._election._core.deadline

    def is_valid(self) -> bool:
        """Still leading right now (checks the term's end, not only the ``lost`` flag)."""
        if self.lost.is_set() or self._final_deadline is not None:
            return False
        core = self._election._core
        return core.term == self.term and time.monotonic() < core.term_end

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if not self.lost.is_set() else 0.0

    @property
    def record(self) -> Any:
        """The record as this term last wrote or read it (its ``extra`` holds e.g. the last slot)."""
        return self._election._core.held

    def _end(self, deadline: float) -> None:
        self._final_deadline = deadline
        self.lost.set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} token={self.token} valid={self.is_valid()}>"


class Leadership(BaseLeadership):
    """A term in the thread driver: ``lost`` is a :class:`threading.Event`."""

    _election: Election

    def __init__(self, election: Election, term: int, token: int) -> None:
        super().__init__(election, term, token)
        self.lost = threading.Event()
        self.work_done = threading.Event()

    def set_extra(self, updates: dict[str, Any], timeout: float | None = None) -> bool:
        """Write extra record keys while this term lasts; True once a write carrying them landed.

        The keys go out at once with a renewal, a compare-and-swap against this term's own
        last write, so they can only land while this term still holds the lock. They are
        kept with the record from then on (renewals, releases and later terms copy them).
        False if the term ended first (or ``timeout`` passed): then nothing may have been
        written.
        """
        election = self._election
        core = election._core
        with election._mutex:
            if core.term != self.term:
                return False
            seq = core.request_extra(updates)
        if seq is None:
            return False
        election._wake.set()
        limit = None if timeout is None else time.monotonic() + timeout
        with election._leading_changed:
            while not (core.term == self.term and core.extra_written >= seq):
                if self.lost.is_set() or core.term != self.term:
                    return False
                left = self.deadline - time.monotonic() if limit is None else min(limit, self.deadline) - time.monotonic()
                if left <= 0:
                    return False
                election._leading_changed.wait(min(left, 0.25))
        return True


class _Watchdog:
    """One thread for the process: calls ``election._on_watchdog()`` at each term's end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[Any]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, election: Any) -> None:
        """Call ``election._on_watchdog()`` at ``when`` (monotonic); any driver with that method."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), weakref.ref(election)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="celery-leader-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, ref = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            election = ref()
            if election is not None:
                try:
                    election._on_watchdog()
                except Exception:  # pragma: no cover - never let the watchdog die
                    log.exception("watchdog callback failed")


_WATCHDOG = _Watchdog()


#: Timing objects made from separate seconds, shared (see :func:`_timing`)
_TIMINGS: dict[Timing, Timing] = {}


def _timing(
    timing: Timing | None,
    lease_duration: float | None,
    renew_deadline: float | None,
    retry_period: float | None,
    max_drift: float | None,
) -> Timing:
    """``timing=`` as given, or a :class:`Timing` from the separate seconds (not both)."""
    given = {
        key: value
        for key, value in (
            ("lease_duration", lease_duration),
            ("renew_deadline", renew_deadline),
            ("retry_period", retry_period),
            ("max_drift", max_drift),
        )
        if value is not None
    }
    if timing is None:
        made = Timing(**given)
        # elections made with the same seconds share one (frozen) Timing: thousands of
        # elections in a process then cost one object, not one each, in every full GC
        shared = _TIMINGS.get(made)
        if shared is None and len(_TIMINGS) < 64:
            shared = _TIMINGS[made] = made
        return shared if shared is not None else made
    if not isinstance(timing, Timing):
        raise ConfigurationError(f"timing= must be a celery_leader.Timing, got {type(timing).__name__}")
    if given:
        raise ConfigurationError(f"give timing= or {', '.join(given)}, not both")
    return timing


class BaseElection:
    """What both drivers share: configuration, the core, the lock, and the read-only API."""

    _leadership: BaseLeadership | None

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        backend: Backend | None = None,
        lock: Lock | None = None,
        identity: str | None = None,
        lease_duration: float | None = None,
        renew_deadline: float | None = None,
        retry_period: float | None = None,
        max_drift: float | None = None,
        timing: Timing | None = None,
        release_on_cancel: bool = True,
        on_started_leading: Callable[..., Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        observer: Any = None,
    ) -> None:
        """``url`` (or an open ``backend``, or a ``lock``) says where; timing either as
        ``timing=Timing(...)`` or as the separate seconds (defaults 15/10/2, ``max_drift``
        0.01). ``observer`` receives ``renewed(election, seconds, ok)`` and
        ``state_changed(election, leading)`` (see :mod:`celery_leader.metrics`).
        """
        self.timing = _timing(timing, lease_duration, renew_deadline, retry_period, max_drift)
        self._core = ElectionCore(
            name,
            default_identity() if identity is None else identity,
            self.timing,
            release_on_cancel=release_on_cancel,
        )
        self.name = name
        self.identity = self._core.identity
        self._own_backend = lock is None and backend is None
        if lock is None:
            if backend is None:
                backend = open_backend(url)
            lock = backend.lock(name)
        self.backend = backend
        self.lock = lock
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.observer = observer
        self._leadership = None
        self._init_driver()

    def _init_driver(self) -> None:
        """The driver's own state, set up at the end of ``__init__``."""

    def _observe_call(self, action: object, started: float, *, ok: bool, renewing: bool) -> None:
        if self.observer is not None and isinstance(action, Update) and renewing:
            try:
                self.observer.renewed(self, time.monotonic() - started, ok)
            except Exception:  # pragma: no cover
                log.exception("metrics observer failed")

    def _observe_state(self, leading: bool) -> None:
        if self.observer is not None:
            self._safe(self.observer.state_changed, self, leading)

    @staticmethod
    def _safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # pragma: no cover
            log.exception("observer failed")

    @property
    def is_leader(self) -> bool:
        """True only while leading *and* before the local deadline (fail closed)."""
        return self._core.is_leader()

    @property
    def leader(self) -> str | None:
        """The holder identity last observed (``None``: free or unknown)."""
        if self._core.leading:
            return self.identity
        return self._core.observed_holder

    @property
    def record(self) -> Any:
        """The :class:`~celery_leader.record.LeaderRecord` last read or written (``None``: none yet)."""
        observed = self._core.observed
        return observed.record if observed is not None else None

    @property
    def token(self) -> int | None:
        """The fencing token of the current term, or ``None`` when not leading."""
        return self._core.token if self.is_leader else None

    @property
    def leadership(self) -> Any:
        """The current term (:class:`Leadership`), or ``None`` when not leading."""
        lead = self._leadership
        return lead if lead is not None and lead.is_valid() else None

    def _term_ready(self) -> bool:
        """Leading, and the term's Leadership object is already there for callers to use."""
        lead = self._leadership
        return self.is_leader and lead is not None and lead.term == self._core.term

    def _close(self) -> None:
        if self._own_backend:
            try:
                self.lock.close()
            finally:
                if self.backend is not None:
                    self.backend.close()

    def __repr__(self) -> str:
        state = "leading" if self.is_leader else "following"
        return f"<{type(self).__name__} {self.name} {self.identity} {state}>"


class Election(BaseElection):
    """Leader election for ``name`` on the backend at ``url`` (thread driver).

    >>> with Election("nightly-report", url="redis://localhost:6379/0") as election:
    ...     if election.wait_until_leader(timeout=30):
    ...         run_report(token=election.token)
    """

    def _init_driver(self) -> None:
        """Parameters: see :class:`BaseElection`."""
        self._mutex = threading.RLock()
        self._wake = threading.Event()
        self._leading_changed = threading.Condition(self._mutex)
        self._term_threads: dict[int, threading.Thread] = {}
        self._notices: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._finished = threading.Event()

    # --- public API --------------------------------------------------------------------

    def start(self) -> Election:
        """Start electing. A configuration that cannot work raises :class:`ConfigurationError` here.

        An election runs once: ``start()`` after ``stop()`` raises :class:`ElectionStopped`.
        """
        if self._core.stop_requested or self._finished.is_set():
            raise ElectionStopped(f"election {self.name!r} was stopped; create a new Election to stand again")
        if self._thread is not None:
            return self
        if self.backend is not None:
            self.backend.check_once(self.timing.renew_deadline)
        self._notifier = threading.Thread(target=self._notify_loop, name=f"leader-notify-{self.name}", daemon=True)
        self._notifier.start()
        self._thread = threading.Thread(target=self._run, name=f"leader-election-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the election; release the lock if held (bounded by ``renew_deadline``).

        Returns once the lock is released (or the bound has passed) whenever this process
        may hold it: leading, releasing, or with an acquisition in flight. Called from this
        election's own ``on_started_leading`` (or another callback) it only requests the
        stop and returns at once: the release then happens when the callback returns.
        """
        with self._mutex:
            self._core.request_stop()
            may_hold = self._core.may_hold()
        self._wake.set()
        if self._thread is None:
            self._close()
            return
        current = threading.current_thread()
        if current in self._term_threads.values() or current is self._notifier:
            return  # waiting here would wait for ourselves (the release awaits the callback)
        limit = self.timing.renew_deadline + self.timing.op_timeout + 1.0 if timeout is None else timeout
        # a follower that holds nothing and has nothing in flight may be inside a watch wait:
        # it cannot acquire any more (the stop is recorded) and ends by itself
        self._finished.wait(limit if may_hold else min(limit, 0.2))
        if may_hold and not self._finished.is_set():
            # never silent about the lock: a caller that exits now leaves it to its lease
            log.warning("%s: the release did not finish in time; the lease will expire", self.name)
        notifier = self._notifier
        if self._finished.is_set() and notifier is not None and notifier is not threading.current_thread():
            notifier.join(5.0)  # on_stopped_leading has run when stop() returns

    def step_down(self) -> None:
        """Release now and let another candidate lead (this one waits one lease before trying again)."""
        with self._mutex:
            self._core.request_step_down()
        self._wake.set()

    def wait_until_leader(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._leading_changed:
            while not self._term_ready():
                if self._finished.is_set():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._leading_changed.wait(0.25 if left is None else min(left, 0.25))
        return True

    def __enter__(self) -> Election:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the driver loop -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._mutex:
                    action = self._core.next_action()
                    self._announce(self._core.pop_events())
                if isinstance(action, Finished):
                    break
                if isinstance(action, Wait):
                    self._wait(action)
                    continue
                if isinstance(action, Update) and action.release:
                    self._await_work()
                self._perform(action)
        except Exception:  # pragma: no cover - the core is meant never to raise
            log.exception("%s: election loop crashed; not leading", self.name)
            with self._mutex:
                self._core._end_term("internal error")
                self._announce(self._core.pop_events())
        finally:
            self._finished.set()
            with self._leading_changed:
                self._leading_changed.notify_all()
            self._notices.put(None)
            self._close()

    def _perform(self, action: Read | Create | Update) -> None:
        started = time.monotonic()
        result: Any
        try:
            if isinstance(action, Read):
                result = self.lock.get(action.timeout)
            elif isinstance(action, Create):
                result = self.lock.create(action.record, action.timeout)
            else:
                result = self.lock.update(action.record, action.expected_version, action.timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the core
            with self._mutex:
                renewing = self._core.leading
                self._core.failed(exc)
                self._announce(self._core.pop_events())
            self._observe_call(action, started, ok=False, renewing=renewing)
            return
        with self._mutex:
            renewing = self._core.leading
            if isinstance(action, Read):
                self._core.read_done(result)
            else:
                self._core.write_done(result)
                self._leading_changed.notify_all()  # set_extra() waits for its write
            if self._core.leading:
                _WATCHDOG.arm(self._core.term_end, self)
            self._announce(self._core.pop_events())
        self._observe_call(action, started, ok=True, renewing=renewing)

    def _wait(self, action: Wait) -> None:
        timeout = action.until - time.monotonic()
        hint: Versioned | None = None
        if timeout > 0 and not self._wake.is_set():
            if action.version is not None and type(self.lock).capabilities.watch:
                try:
                    hint = self.lock.wait_for_change_hinted(action.version, timeout)
                except Exception as exc:  # noqa: BLE001 - a failed watch is only a shorter wait
                    log.debug("%s: wait_for_change failed: %s", self.name, exc)
                    self._wake.wait(min(timeout, self.timing.retry_period))
            else:
                self._wake.wait(timeout)
        self._wake.clear()
        with self._mutex:
            # a hint the core takes (the followed leader renewed) replaces the read
            if hint is None or not self._core.hinted(hint):
                self._core.wait_done()

    def _await_work(self) -> None:
        """Before a graceful release, let the ended term's work stop (bounded by its deadline)."""
        lead = self._leadership
        thread = self._term_threads.get(lead.term) if lead is not None else None
        if thread is None or thread is threading.current_thread():
            return
        thread.join(max(0.0, (lead.deadline if lead else 0.0) - time.monotonic()))
        if thread.is_alive():
            log.warning("%s: on_started_leading did not return before the lease deadline", self.name)

    def _on_watchdog(self) -> None:
        with self._mutex:
            if not self._core.check_deadline():
                return
            self._announce(self._core.pop_events())
        self._wake.set()

    # --- events and callbacks ----------------------------------------------------------

    def _announce(self, events: Sequence[object]) -> None:
        """Apply the core's events. Called with ``_mutex`` held, in the step that made them.

        Nothing here blocks or runs user code: the term's work starts in its own thread,
        the other callbacks are queued for the notifier thread.
        """
        started: list[Leadership] = []
        for event in events:
            if isinstance(event, StartedLeading):
                lead = Leadership(self, event.term, event.token)
                self._leadership = lead
                started.append(lead)
                self._observe_state(True)
            elif isinstance(event, StoppedLeading):
                ending = self._leadership
                if ending is not None and ending.term == event.term:
                    ending._end(self._core.deadline)
                self._observe_state(False)
                if self.on_stopped_leading is not None:
                    self._notices.put(self.on_stopped_leading)
            elif isinstance(event, NewLeader) and self.on_new_leader is not None:
                self._notices.put(functools.partial(self.on_new_leader, event.identity))
        for lead in started:
            if self.on_started_leading is not None and not lead.lost.is_set():
                t = threading.Thread(
                    target=self._run_term, args=(lead,), name=f"leader-term-{self.name}-{lead.token}", daemon=True
                )
                self._term_threads = {lead.term: t}
                t.start()
        if events:
            with self._leading_changed:
                self._leading_changed.notify_all()

    def _run_term(self, lead: Leadership) -> None:
        try:
            assert self.on_started_leading is not None
            if not lead.is_valid():
                log.warning("%s: term %d ended before its work could start; not starting it", self.name, lead.token)
                return
            self.on_started_leading(lead)
        except Exception:
            log.exception("%s: on_started_leading raised; ending this term", self.name)
            if not lead.lost.is_set():
                self.step_down()
        finally:
            lead.work_done.set()

    def _notify_loop(self) -> None:
        while True:
            cb = self._notices.get()
            if cb is None:
                return
            try:
                cb()
            except Exception:
                log.exception("%s: leader callback raised", self.name)
                if self.is_leader:
                    self.step_down()

