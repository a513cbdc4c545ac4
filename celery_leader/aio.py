"""The asyncio driver: the same :class:`~celery_leader.core.ElectionCore`, as one task.

Rules, so that no work outlives its term (docs/design.md, "asyncio callbacks"):

* The driver task never runs user code. Events are applied synchronously in the step
  that made them; the term's work starts as its own task (or thread), and
  ``on_new_leader`` / ``on_stopped_leading`` are delivered in order by a separate notifier
  task, so a slow callback cannot delay a renewal.
* ``on_started_leading`` as a coroutine function runs as a task that is *cancelled* when
  the term ends (after ``leadership.lost``, an :class:`asyncio.Event`, is set). As a plain
  function it runs in a thread of its own and gets a thread-driver
  :class:`~celery_leader.election.Leadership` whose ``lost`` is a :class:`threading.Event`
  (``while not lost.is_set(): ...`` works as in the thread driver). A term that already
  ended never starts its work. A graceful release waits for the work to finish, bounded by
  the term's deadline.
* Blocking backend calls run in the driver's own bounded thread pool, never in the loop's
  default executor, so hung calls cannot starve the application's ``asyncio.to_thread``.
  Backends with a native async client (overriding ``aget``/``acreate``/``aupdate``) are
  awaited directly.
* Steady leaders are renewed by one scheduler per (event loop, batch group), not by
  their own tasks (:class:`_Renewals`): a leader whose next action is a renewal parks its
  task, the scheduler asks that election's own core for each renewal when it falls due
  and hands each outcome back to that core, and wakes the task only when something
  changes. Locks that share a :class:`~celery_leader.lock.RenewBatch`
  (``capabilities.batch``: Redis, PostgreSQL, etcd, memory) renew together in one ``update_many`` call
  (one round trip), each item still a compare-and-swap against its own version; other
  locks renew one call each.
* The term ends at ``renew_deadline`` after the last successful write was sent, even
  while a call hangs: by the scheduler's timer while the leader is parked, by the
  election's own ``loop.call_at`` timer otherwise. Cancelling the election's own task (for
  example at loop shutdown) still releases the lock, within ``renew_deadline``.

Limit: all of this needs a running loop. Code that blocks the loop delays the timer too;
async work cannot run while the loop is blocked, but a plain ``on_started_leading``
thread can: its ``lost`` is therefore also set by the process watchdog thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import inspect
import itertools
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .core import Create, Finished, NewLeader, Phase, Read, StartedLeading, StoppedLeading, Timing, Update, Wait
from .election import _WATCHDOG, BaseElection, BaseLeadership, Leadership
from .errors import BackendUnavailable, ElectionStopped
from .lock import Lock, RenewBatch, Versioned, _watch_pool

__all__ = ["AsyncElection", "AsyncLeadership"]

log = logging.getLogger(__name__)

#: threads for the blocking backend calls of every asyncio election in this process
CALL_POOL_SIZE = 32
_CALL_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_CALL_POOL_GUARD = threading.Lock()


def _call_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The driver's own executor: bounded, and never the loop's default one."""
    global _CALL_POOL
    with _CALL_POOL_GUARD:
        if _CALL_POOL is None:
            _CALL_POOL = concurrent.futures.ThreadPoolExecutor(CALL_POOL_SIZE, thread_name_prefix="celery-leader-call")
        return _CALL_POOL


_PARKED, _OUTSTANDING = 1, 2

#: the scheduler group of every lock renewed one call per renewal (no ``capabilities.batch``)
_SINGLE = object()


class _Out:
    """One renewal taken from its election's core and not yet answered (pending or in flight)."""

    __slots__ = ("election", "action", "handle", "sent", "until", "bound", "taken")

    def __init__(self, election: AsyncElection, action: Update, handle: object, sent: float) -> None:
        #: (the calls' lists hold these alone, not (election, renewal) tuples: one object less
        #: per renewal in flight, where a GC generation change may catch it)
        self.election = election
        self.action = action
        #: the core's :attr:`~celery_leader.core.ElectionCore.pending_call` for this renewal
        self.handle = handle
        self.sent = sent
        #: the call's own timeout, then the driver's bound on waiting for it (as a lone call's)
        self.until = sent + action.timeout
        self.bound = sent + action.timeout + 1.0
        #: put into a call already (an election can be in ``pending`` twice: abandoned, then due again)
        self.taken = False


class _Lane:
    """The threads of one scheduler for its ``update_many`` calls (at most ``size`` at once).

    Not the shared call pool: after many lost terms its threads are busy with reads and
    acquisitions (one call each), and the renewals of every steady leader must not queue
    behind them (nor they behind a stalled batch). Not ``run_in_executor`` either: each
    call would make a concurrent future and an asyncio future chained by callbacks, three
    loop callbacks per call; a lane thread answers with one ``call_soon_threadsafe``.
    Threads start as calls need them and end after ``IDLE`` seconds without one.
    """

    IDLE = 60.0

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any, Any], None]]] = (
            queue.SimpleQueue()
        )
        self.guard = threading.Lock()
        self.threads = 0
        self.idle = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Callable[[Any, Any], None]) -> None:
        """Run ``fn(*args)`` in a lane thread; then ``done(result, exception)`` on the loop."""
        # ``idle``: threads waiting for a job minus jobs waiting for a thread (under the guard,
        # with the queue, so that a thread that gives up after IDLE never strands a job)
        with self.guard:
            start = self.idle <= 0 and self.threads < self.size
            if start:
                self.threads += 1
            else:
                self.idle -= 1
            self.jobs.put((fn, args, done))
        if start:
            threading.Thread(target=self._work, name="celery-leader-batch", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                fn, args, done = self.jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self.guard:
                    if self.jobs.empty():
                        self.threads -= 1
                        self.idle -= 1
                        return
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides
                error = exc
            with self.guard:
                self.idle += 1
            try:
                self.loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                pass
            del fn, args, done, result, error


class _Renewals:
    """The renewals of every steady leader of one (event loop, batch group), without their tasks.

    A leader whose next action is "renew at ``next_renew``" *parks*: its task waits on one
    future and the scheduler owns the election until something changes. Two heaps: ``due``
    (parked elections, by renewal time) and ``ends`` (every member, by the end of its term:
    an entry may be earlier than the term's end, never later; when it comes due and the
    term has moved on, it is pushed again at the new end, so a steady leader costs one
    ``ends`` entry per ``renew_deadline``, not one per renewal). One loop timer serves both,
    on a grid of ``cadence`` seconds (the smallest :meth:`early` of the members): a renewal
    is keyed to the first grid point at most ``early`` before its time (it may go out
    early, never late, because of the grid; the term counts from the send), a term's end
    to the last grid point before it (exactly to the end once that point has passed). So
    however many members there are, the timer fires at most once per grid point.

    Each due election's own core decides (``next_action``): a renewal ``Update`` joins the
    next ``update_many`` call (or, without ``capabilities.batch``, goes out alone), its
    outcome goes back to that core (``write_done`` / ``failed``), and the election stays
    parked while nothing changed. Anything else wakes its task, with the core's action
    handed over for the task to perform (a read, a release, a wait): a failure, a conflict,
    an ended term, a request (``stop``, ``step_down``, ``set_extra`` poke the task; a
    request that arrives while its renewal is out takes effect once that renewal is
    answered or abandoned).

    Deadlines do not depend on any call returning. When a member's term ends while its
    renewal is out, the renewal is abandoned (``failed``: its write may still land, and the
    core remembers that) and the term ends; a parked member's term ends at its end
    whatever else happens. A call is also bounded as a lone call would be (its timeout plus
    one second, one timer per call): past that its renewals are abandoned and retried. An
    answer to an abandoned renewal is dropped (its handle no longer matches the core's call).
    """

    MAX_BATCH = 500
    MAX_IN_FLIGHT = 4
    #: seconds a renewal may go out before its time (at most EARLY_SHARE of its retry_period)
    EARLY = 0.05
    EARLY_SHARE = 0.025

    def __init__(self, loop: asyncio.AbstractEventLoop, group: object) -> None:
        self.loop = loop
        self.group = group if isinstance(group, RenewBatch) else None
        # (renewal time, stamp): tuples of a float and an int, which CPython's collector
        # stops tracking, so a renewal's heap entry never reaches the oldest generation;
        # the election is found by its stamp
        self.due: list[tuple[float, int]] = []
        self.due_of: dict[int, AsyncElection] = {}
        # (term end, stamp), the same way
        self.ends: list[tuple[float, int]] = []
        self.ends_of: dict[int, AsyncElection] = {}
        self.pending: list[AsyncElection] = []
        self.in_flight = 0
        self.members = 0
        #: the grid of the timer (seconds): every member's ``early`` or less
        self.cadence = self.EARLY
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.flush_soon = False
        self._stamps = itertools.count()
        self._lane = _Lane(loop, self.MAX_IN_FLIGHT)

    @classmethod
    def early(cls, timing: Timing) -> float:
        return min(cls.EARLY, cls.EARLY_SHARE * timing.retry_period)

    # --- membership (called from the election's task) --------------------------------

    def park(self, e: AsyncElection, until: float, arm: bool = True) -> None:
        """``e``'s task waits; renew it at ``until`` (its ``next_renew``) or end its term."""
        if not e._sched_state:
            self.members += 1
            self.cadence = min(self.cadence, e._early)
        e._sched_state = _PARKED
        core = e._core
        if until == core.next_renew:
            # on the scheduler's grid (multiples of the cadence), within ``early`` before
            # ``until``: renewals due close together go out in one tick, and a tick for one
            # member's term end (also on the grid) serves the renewals due then too
            grid = self.cadence
            key = math.ceil((until - e._early) / grid) * grid
            if key + e._early < until:  # (rounding)
                key += grid
        else:
            key = until
        stamp = next(self._stamps)
        e._due_stamp = stamp
        self.due_of[stamp] = e
        heapq.heappush(self.due, (key, stamp))
        self._watch_end(e, core.term_end)
        if arm:
            self._arm()

    def submit(self, e: AsyncElection, action: Update) -> None:
        """``e``'s task asked for a renewal itself (e.g. ``set_extra``): send it with the next batch."""
        if not e._sched_state:
            self.members += 1
            self.cadence = min(self.cadence, e._early)
        self._out(e, action, time.monotonic())
        self._watch_end(e, e._core.term_end)
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self._flush_now)
        self._arm()

    def leave(self, e: AsyncElection) -> None:
        """``e``'s task runs again: forget it (its heap entries go stale)."""
        state = e._sched_state
        if not state:
            return
        out = e._out
        self._forget(e)
        if state == _OUTSTANDING and out is not None and e._core.pending_call is out.handle:
            # only when the task is cancelled: the answer will not be awaited
            e._core.failed(BackendUnavailable("the renewal was abandoned: the election's task was cancelled"))
            e._announce(e._core.pop_events())

    def _forget(self, e: AsyncElection) -> None:
        if e._sched_state:
            e._sched_state = 0
            e._due_stamp = e._end_stamp = -1
            e._out = None
            self.members -= 1

    def _out(self, e: AsyncElection, action: Update, now: float) -> None:
        e._out = _Out(e, action, e._core.pending_call, now)
        e._sched_state = _OUTSTANDING
        e._due_stamp = -1
        pending = self.pending
        if len(pending) > 4 * self.MAX_BATCH:
            # renewals abandoned while every call in flight hung: drop them
            self.pending = pending = [p for p in pending if p._out is not None and not p._out.taken]
        pending.append(e)

    def _watch_end(self, e: AsyncElection, when: float) -> None:
        """Make sure ``e`` has an ``ends`` entry no later than ``when``.

        On the grid, rounded down: a steady leader's entry comes due before its term could
        end (it is pushed again then, at the new end), and on the grid such checks share
        the ticks of the renewals instead of a wake-up each. Only when the grid point has
        passed (the term ends within a cadence) is the entry exactly at the end.
        """
        if e._end_stamp >= 0 and e._end_key <= when:
            return
        grid = self.cadence
        key = math.floor(when / grid) * grid
        if key <= time.monotonic():
            key = when
        stamp = next(self._stamps)
        e._end_stamp, e._end_key = stamp, key
        self.ends_of[stamp] = e
        heapq.heappush(self.ends, (key, stamp))

    def _wake(self, e: AsyncElection, action: Any = None) -> None:
        """Hand ``e`` back to its task (with the action its core decided, if any)."""
        self._forget(e)
        e._handed = action
        waiter = e._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the timer ---------------------------------------------------------------------

    def _arm(self) -> None:
        due, ends, due_of, ends_of = self.due, self.ends, self.due_of, self.ends_of
        while due and due_of[due[0][1]]._due_stamp != due[0][1]:
            del due_of[heapq.heappop(due)[1]]
        while ends and ends_of[ends[0][1]]._end_stamp != ends[0][1]:
            del ends_of[heapq.heappop(ends)[1]]
        if len(due) > 2 * self.members + 64:
            self.due = due = [x for x in due if due_of[x[1]]._due_stamp == x[1]]
            heapq.heapify(due)
            self.due_of = {stamp: due_of[stamp] for _, stamp in due}
        if len(ends) > 2 * self.members + 64:
            self.ends = ends = [x for x in ends if ends_of[x[1]]._end_stamp == x[1]]
            heapq.heapify(ends)
            self.ends_of = {stamp: ends_of[stamp] for _, stamp in ends}
        when = ends[0][0] if ends else math.inf
        if due:
            when = min(when, due[0][0])
        timer = self.timer
        if timer is not None:
            if self.timer_at <= when:
                return  # fires no later than needed; it re-arms then
            timer.cancel()
            self.timer = None
        if when < math.inf:
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._tick)
        else:
            self.timer_at = math.inf

    def _tick(self) -> None:
        self.timer, self.timer_at = None, math.inf
        try:
            now = time.monotonic()
            ends, ends_of = self.ends, self.ends_of
            while ends and ends[0][0] <= now:
                _, stamp = heapq.heappop(ends)
                e = ends_of.pop(stamp)
                if e._end_stamp == stamp:
                    e._end_stamp = -1
                    self._guarded(self._end_due, e, now)
            due = self.due
            if due and due[0][0] <= now:
                due_of, renew_due = self.due_of, self._renew_due
                while due and due[0][0] <= now:
                    _, stamp = heapq.heappop(due)
                    e = due_of.pop(stamp)
                    if e._due_stamp == stamp:
                        e._due_stamp = -1
                        try:  # (as _guarded, without a call more per renewal)
                            renew_due(e, now)
                        except Exception:  # pragma: no cover - the core is meant never to raise
                            self._failed(e)
            self._flush()
        finally:
            self._arm()

    def _guarded(self, fn: Callable[..., None], e: AsyncElection, *args: Any) -> None:
        try:
            fn(e, *args)
        except Exception:  # pragma: no cover - the core is meant never to raise
            self._failed(e)

    def _failed(self, e: AsyncElection) -> None:
        """(In an ``except`` block.) The scheduler's own step for ``e`` raised: its task takes over."""
        log.exception("%s: renewal scheduler failed; the election's task takes over", e.name)
        self._wake(e)

    def _renew_due(self, e: AsyncElection, now: float) -> None:
        core = e._core
        action = core.next_action(e._early)
        events = core.pop_events() if core.events else None
        if events:
            e._announce(events)
        if isinstance(action, Update) and not action.release and core.leading and not e._woken:
            self._out(e, action, now)
        elif isinstance(action, Wait) and action.version is None and core.leading and not e._woken and not events:
            self.park(e, action.until, arm=False)  # not due yet (its time moved)
        else:
            self._wake(e, action)

    def _end_due(self, e: AsyncElection, now: float) -> None:
        """A member's ``ends`` entry came due: end its term if its end has come."""
        core = e._core
        if core.leading and now < core.term_end:
            self._watch_end(e, core.term_end)  # renewed since (or a timer a hair early)
            return
        out = e._out
        if out is not None:
            self._abandon(e, out, f"no answer before the term's end ({e.timing.renew_deadline} s after the last renewal)")
            return
        core.check_deadline()
        if core.events:
            e._announce(core.pop_events())
        self._wake(e)

    def _abandon(self, e: AsyncElection, out: _Out, reason: str) -> None:
        """Stop waiting for ``out``: a failure for its core (its write may still land)."""
        e._out = None
        core = e._core
        if core.pending_call is out.handle:
            core.failed(BackendUnavailable(f"renewal: {reason}"))
        if core.events:
            e._announce(core.pop_events())
        if e.observer is not None:
            e._observe_call(out.action, out.sent, ok=False, renewing=True)
        self._wake(e)

    def _bound_due(self, live: list[_Out]) -> None:
        """A call outlived its bound (a lone call's: timeout + 1 s): give up on its renewals."""
        try:
            for out in live:
                e = out.election
                if e._out is out:
                    self._guarded(self._abandon, e, out, f"no answer within {out.action.timeout:.3f} s")
        finally:
            self._arm()

    # --- sending -----------------------------------------------------------------------

    def _flush_now(self) -> None:
        self.flush_soon = False
        try:
            self._flush()
        finally:
            self._arm()

    def _flush(self) -> None:
        if not self.pending:
            return
        now = time.monotonic()
        if self.group is None:
            todo, self.pending = self.pending, []
            sent: list[_Out] = []
            for e in todo:
                out = e._out
                if out is not None and e._sched_state == _OUTSTANDING and not out.taken:
                    out.taken = True
                    self._send_one(e, out)
                    sent.append(out)
            if sent:
                self.loop.call_at(max(out.bound for out in sent), self._bound_due, sent)
            return
        while self.pending and self.in_flight < self.MAX_IN_FLIGHT:
            chunk, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
            live: list[_Out] = []
            for e in chunk:
                out = e._out
                if out is None or e._sched_state != _OUTSTANDING or out.taken:
                    continue  # abandoned before it went out (or listed twice)
                out.taken = True
                if out.until <= now:
                    self._guarded(self._apply, e, out, BackendUnavailable("renewal: no time left to send it"))
                    continue
                live.append(out)
            if not live:
                continue
            # the call must end within every included renewal's own timeout
            timeout = max(0.001, min(out.until for out in live) - now)
            items = [(out.election.lock, out.action.record, out.action.expected_version) for out in live]
            self.in_flight += 1
            bound = self.loop.call_at(max(out.bound for out in live), self._bound_due, live)
            self._lane.submit(self.group.update_many, (items, timeout), functools.partial(self._batch_done, live, bound))

    def _send_one(self, e: AsyncElection, out: _Out) -> None:
        action, lock = out.action, e.lock
        if type(lock).aupdate is not Lock.aupdate:
            call: asyncio.Future[Any] = asyncio.ensure_future(
                lock.aupdate(action.record, action.expected_version, action.timeout), loop=self.loop
            )
        else:
            fn = functools.partial(lock.update, action.record, action.expected_version, action.timeout)
            call = self.loop.run_in_executor(_call_pool(), fn)
        call.add_done_callback(functools.partial(self._one_done, e, out))

    def _one_done(self, e: AsyncElection, out: _Out, call: asyncio.Future[Any]) -> None:
        if call.cancelled():
            outcome: Any = BackendUnavailable("the renewal call was cancelled")
        else:
            exc = call.exception()
            outcome = exc if exc is not None else call.result()
        try:
            self._guarded(self._apply, e, out, outcome)
        finally:
            self._arm()

    def _batch_done(self, live: list[_Out], bound: asyncio.TimerHandle, answer: Any, exc: BaseException | None) -> None:
        self.in_flight -= 1
        bound.cancel()
        try:
            results: list[Any] = [exc] * len(live) if exc is not None else answer
            if exc is None and (not isinstance(results, list) or len(results) != len(live)):
                assert self.group is not None
                bad = BackendUnavailable(f"{type(self.group).__name__}.update_many answered {len(live)} items wrongly")
                results = [bad] * len(live)
            apply = self._apply
            for out, outcome in zip(live, results):
                try:  # (as _guarded, without a call more per renewal)
                    apply(out.election, out, outcome)
                except Exception:  # pragma: no cover - the core is meant never to raise
                    self._failed(out.election)
            self._flush()
        finally:
            self._arm()

    def _apply(self, e: AsyncElection, out: _Out, outcome: Any) -> None:
        """Hand one renewal's outcome to its own core; keep it parked if nothing changed."""
        if e._out is not out:
            return  # abandoned (its term's end or its bound came first, or its task left)
        e._out = None
        core = e._core
        if core.pending_call is not out.handle:  # pragma: no cover - the task owns the core meanwhile
            self._wake(e)
            return
        ok = isinstance(outcome, str)
        if ok:
            core.write_done(outcome)
        elif isinstance(outcome, BaseException):
            core.failed(outcome)
        else:
            core.failed(BackendUnavailable(f"the renewal answered {type(outcome).__name__}, not a version"))
        events = core.pop_events() if core.events else None
        if events:
            e._announce(events)
        if e.observer is not None:
            e._observe_call(out.action, out.sent, ok=ok, renewing=True)
        if ok and core.leading and not events and not e._woken:
            lead = e._leadership
            if lead is not None and lead.threaded is not None:
                _WATCHDOG.arm(core.term_end, e)
            self.park(e, core.next_renew, arm=False)  # (the caller arms the timer once)
        else:
            self._wake(e)


_SCHEDULERS: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, object, _Renewals]] = {}


def _scheduler(loop: asyncio.AbstractEventLoop, group: object) -> _Renewals:
    """One scheduler per (event loop, batch group); forgotten with a closed loop."""
    key = (id(loop), id(group))
    found = _SCHEDULERS.get(key)
    if found is None or found[0] is not loop or found[1] is not group:
        for k in [k for k, v in _SCHEDULERS.items() if v[0].is_closed()]:
            del _SCHEDULERS[k]
        found = _SCHEDULERS[key] = (loop, group, _Renewals(loop, group))
    return found[2]


class _Watch:
    """One stretch of a follower's waits that a watch thread performs (see
    :meth:`AsyncElection._follow`), and the claim on the core it shares with the loop.

    ``guard`` makes each of the thread's steps on the core atomic with respect to the
    loop taking the election back: once ``over`` is set (under ``guard``) the thread
    touches nothing any more. ``mark`` is the thread's progress: the end of its current
    wait, or the start of its current read (``None`` until a pool thread picks it up).
    """

    __slots__ = ("guard", "over", "mark", "handed", "ended", "job", "timer")

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.over = False
        self.mark: float | None = None
        #: the core's action the thread decided on last and did not perform (for the loop)
        self.handed: Any = None
        #: set when the stretch is over: wakes the thread from a poll's sleep or its pause after a failed watch
        self.ended = threading.Event()
        self.job: concurrent.futures.Future[Any] | None = None
        #: the loop's current check of the thread (see :meth:`AsyncElection._check_follow`)
        self.timer: asyncio.TimerHandle | None = None


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function (also through partial, or an object with ``async def __call__``)."""
    call = type(fn).__call__ if not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


class AsyncLeadership(BaseLeadership):
    """A term in the asyncio driver: ``lost`` is an :class:`asyncio.Event`."""

    _election: AsyncElection

    def __init__(self, election: AsyncElection, term: int, token: int) -> None:
        super().__init__(election, term, token)
        self.lost = asyncio.Event()
        #: the thread-side view handed to a plain ``on_started_leading``
        self.threaded: Leadership | None = None

    def _end(self, deadline: float) -> None:
        super()._end(deadline)
        if self.threaded is not None:
            self.threaded._end(deadline)

    async def set_extra(self, updates: dict[str, Any], timeout: float | None = None) -> bool:
        """The asyncio twin of :meth:`Leadership.set_extra` (call it from the election's loop).

        The keys go out at once with a renewal, a compare-and-swap against this term's own
        last write, so they land only while this term holds the lock. True once such a
        write landed; False if the term ended first or ``timeout`` passed (then nothing
        may have been written).
        """
        election = self._election
        core = election._core
        if core.term != self.term or not self.is_valid():
            return False
        seq = core.request_extra(updates)
        if seq is None:
            return False
        election._poke()
        limit = None if timeout is None else time.monotonic() + timeout
        while not (core.term == self.term and core.extra_written >= seq):
            now = time.monotonic()
            if self.lost.is_set() or core.term != self.term or now >= self.deadline:
                return False
            if limit is not None and now >= limit:
                return False
            await asyncio.sleep(0.01)  # one write per call: a short poll, no driver hook needed
        return True


Callback = Callable[..., Any]


class AsyncElection(BaseElection):
    """Leader election in an event loop.

    >>> async with AsyncElection("jobs", url="redis://localhost/0") as election:
    ...     await election.wait_until_leader()

    **Thousands of elections in one process.** Share one backend object
    (``AsyncElection(name, backend=backend)``) so that renewals go out in batches. A
    renewal leaves nothing behind for CPython's full garbage collections to count, so they
    stay rare; if the application's own objects make them frequent (each walks every
    election's objects: about 0.2 s at 10,000 elections, a pause of the event loop),
    ``gc.collect(); gc.freeze()`` once the elections are started leaves them out of every
    later collection (memory of frozen objects in reference cycles, an election stopped
    later, is not reclaimed until ``gc.unfreeze()``). See docs/design.md, "Many elections
    in one process".
    """

    # the driver's own state in slots: with the base class's attributes it would be more
    # than a shared-key instance dict holds, and a process may hold 10,000 elections
    __slots__ = (
        "_batch", "_changed", "_deadline_timer", "_due_stamp", "_early", "_end_key", "_end_stamp",
        "_event_loop", "_follow_in_threads", "_handed", "_native_async", "_notices", "_notifier", "_out",
        "_sched", "_sched_state", "_stopped", "_task", "_waiter", "_woken", "_work", "_work_task",
    )  # fmt: skip

    def _init_driver(self) -> None:
        """Parameters: see :class:`~celery_leader.election.BaseElection`; callbacks may be coroutines."""
        self._leadership: AsyncLeadership | None = None
        self._work: asyncio.Future[Any] | None = None  # the current term's work (a task, or a thread's future)
        self._work_task: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[Any] | None = None
        # on_new_leader / on_stopped_leading, delivered in order by a task that runs only
        # while there is something to deliver (none per idle election)
        self._notifier: asyncio.Task[Any] | None = None
        self._notices: list[tuple[Callback, tuple[Any, ...]]] | None = None
        # wake-ups: a flag plus the future the driver is waiting on (cheaper than an Event per wait)
        self._woken = False
        self._waiter: asyncio.Future[Any] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # made by the first wait_until_leader()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        # blocking calls go to our pool unless the backend has a native async client
        kind = type(self.lock)
        self._native_async = kind.aget is not Lock.aget or kind.aupdate is not Lock.aupdate
        # a follower's waits (blocking watches, or sleeps on a polling backend) and the reads
        # after them run in a watch-pool thread, which involves the loop only when there is
        # something to decide (see _follow)
        self._follow_in_threads = kind.await_for_change is Lock.await_for_change and kind.aget is Lock.aget
        # renewals go out in batches when the backend declares it can (capabilities.batch)
        # (a lock with its own async calls keeps them, one call per renewal)
        self._batch = self.lock.renew_batch() if kind.capabilities.batch and not self._native_async else None
        # the renewal scheduler of this loop and batch group (set by start()), and this
        # election's place in it: see _Renewals
        self._sched: _Renewals | None = None
        self._sched_state = 0
        self._due_stamp = -1
        self._end_stamp = -1
        self._end_key = 0.0
        self._out: _Out | None = None
        self._handed: Any = None
        self._early = _Renewals.early(self.timing)

    # --- public API --------------------------------------------------------------------

    async def start(self) -> AsyncElection:
        """Start electing. A configuration that cannot work raises :class:`ConfigurationError` here.

        An election runs once: ``start()`` after ``stop()`` raises :class:`ElectionStopped`.
        """
        if self._stopped or self._core.stop_requested:
            raise ElectionStopped(f"election {self.name!r} was stopped; create a new AsyncElection to stand again")
        if self._task is None:
            loop = asyncio.get_running_loop()
            if self.backend is not None:
                await loop.run_in_executor(_call_pool(), self.backend.check_once, self.timing.renew_deadline)
            self._event_loop = loop
            self._sched = _scheduler(loop, self._batch if self._batch is not None else _SINGLE)
            self._task = loop.create_task(self._run(), name=f"leader-election-{self.name}")
        return self

    async def stop(self) -> None:
        """Stop; release the lock if held (bounded by ``renew_deadline``).

        Awaited from this election's own ``on_started_leading`` (or another callback) it
        only requests the stop and returns: the release happens once the callback returns.
        """
        self._stopped = True
        self._core.request_stop()
        self._poke()
        if self._task is None:
            self._close()
            return
        current = asyncio.current_task()
        if current is not None and current in (self._work_task, self._notifier):
            return  # waiting here would wait for ourselves
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.timing.renew_deadline + self.timing.op_timeout + 1)
        except asyncio.CancelledError:
            if not self._task.done():
                raise
        except asyncio.TimeoutError:
            # as the thread driver: the release is bounded; the lease runs out by itself
            log.warning("%s: the release did not finish in time; the lease will expire", self.name)
        notifier = self._notifier
        if notifier is not None and not notifier.done():
            # on_stopped_leading has run when stop() returns (bounded, as in the thread driver)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(notifier), 5.0)

    def step_down(self) -> None:
        self._core.request_step_down()
        self._poke()

    def _poke(self) -> None:
        """Wake the driver from a wait (from the loop, or from another thread)."""
        loop = self._event_loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._poke)
            return
        self._woken = True
        waiter = self._waiter
        # a renewal that is out is answered (or abandoned at its bound) first; then the task wakes
        if waiter is not None and not waiter.done() and self._sched_state != _OUTSTANDING:
            waiter.set_result(None)

    async def wait_until_leader(self, timeout: float | None = None) -> bool:
        assert self._event_loop is not None, "start() the election first"

        async def until() -> None:
            while not self._term_ready():
                if self._task is not None and self._task.done():
                    return
                if self._changed is None:
                    self._changed = asyncio.Event()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.25)

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._term_ready()

    async def __aenter__(self) -> AsyncElection:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the driver loop -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            # cancelled from outside: still release what we hold, then finish cancelling
            self._stopped = True
            self._core.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._loop(), self.timing.renew_deadline)
            raise
        except Exception:  # pragma: no cover - the core is meant never to raise
            log.exception("%s: election loop crashed; not leading", self.name)
            self._core._end_term("internal error")
            self._announce(self._core.pop_events())
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._changed_now()
            self._close()

    async def _loop(self) -> None:
        core = self._core
        while True:
            action, self._handed = self._handed, None
            if action is None:  # (else: decided by the scheduler, which announced its events)
                action = core.next_action()
            self._announce(core.pop_events())
            if isinstance(action, Finished):
                return
            sched = self._sched
            if (
                sched is not None
                and core.leading
                and not self._woken
                and (isinstance(action, Wait) and action.version is None or isinstance(action, Update) and not action.release)
            ):
                # a steady leader: the scheduler renews it; this task sleeps until something changes
                await self._park(sched, action)
                if core.leading:
                    self._arm_deadline()  # this task watches the term's end again
                continue
            if isinstance(action, Wait):
                if self._follow_in_threads and core.phase is Phase.FOLLOWING:
                    await self._follow(action)
                else:
                    await self._wait(action)
                continue
            if isinstance(action, Update) and action.release:
                await self._await_work()
            await self._perform(action)

    async def _park(self, sched: _Renewals, action: Wait | Update) -> None:
        """Leave the renewals to the scheduler until it hands this election back (or a poke)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()  # the scheduler watches the term's end meanwhile
            self._deadline_timer = None
        try:
            if isinstance(action, Update):
                sched.submit(self, action)
            else:
                sched.park(self, action.until)
            await waiter
        finally:
            self._waiter = None
            sched.leave(self)
            self._woken = False

    def _call(self, action: Read | Create | Update) -> Awaitable[Any]:
        lock = self.lock
        # a backend's own async method where it has one; never Lock's default (to_thread
        # uses the loop's default executor, which hung calls would starve)
        kind = type(lock)
        if isinstance(action, Read) and kind.aget is not Lock.aget:
            return lock.aget(action.timeout)
        if isinstance(action, Create) and kind.acreate is not Lock.acreate:
            return lock.acreate(action.record, action.timeout)
        if isinstance(action, Update) and kind.aupdate is not Lock.aupdate:
            return lock.aupdate(action.record, action.expected_version, action.timeout)
        loop = asyncio.get_running_loop()
        if isinstance(action, Read):
            fn: Callable[[], Any] = functools.partial(lock.get, action.timeout)
        elif isinstance(action, Create):
            fn = functools.partial(lock.create, action.record, action.timeout)
        else:
            fn = functools.partial(lock.update, action.record, action.expected_version, action.timeout)
        return loop.run_in_executor(_call_pool(), fn)

    async def _perform(self, action: Read | Create | Update) -> None:
        started, renewing, ok = time.monotonic(), self._core.leading, False
        try:
            call = self._call(action)
            # the backend promises to honour the timeout; this bounds a broken one
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(action.timeout + 1.0):
                    result = await call
            else:  # pragma: no cover
                result = await asyncio.wait_for(call, action.timeout + 1.0)
        except asyncio.TimeoutError as exc:
            self._core.failed(BackendUnavailable(f"no answer within {action.timeout} s: {exc}"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes to the core
            self._core.failed(exc)
        else:
            if isinstance(action, Read):
                self._core.read_done(result)
            else:
                self._core.write_done(result)
            ok = True
            if self._core.leading:
                self._arm_deadline()
        self._announce(self._core.pop_events())
        self._observe_call(action, started, ok=ok, renewing=renewing)

    def _arm_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        # the loop's clock is time.monotonic, the same clock as the core's
        self._deadline_timer = loop.call_at(self._core.term_end, self._on_deadline)
        lead = self._leadership
        if lead is not None and lead.threaded is not None:
            # a plain on_started_leading runs in a thread: end it on time even if the loop is blocked
            _WATCHDOG.arm(self._core.term_end, self)

    def _on_deadline(self) -> None:
        """The loop's timer: end the term at its end, even while a call hangs."""
        if self._core.check_deadline():
            self._announce(self._core.pop_events())
            self._poke()

    def _on_watchdog(self) -> None:
        """The process watchdog (another thread): a blocked loop must not keep thread work going."""
        lead = self._leadership
        if lead is None or lead.threaded is None or lead.threaded.lost.is_set():
            return
        core = self._core
        if core.term == lead.term and time.monotonic() < core.term_end:
            return  # renewed meanwhile
        log.warning("%s: the event loop did not end term %d on time; ending its thread work", self.name, lead.token)
        lead.threaded._end(core.deadline)
        loop = self._event_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._after_watchdog, lead)

    def _after_watchdog(self, lead: AsyncLeadership) -> None:
        if not self._core.check_deadline() and lead is self._leadership and not lead.lost.is_set():
            # a renewal raced with the watchdog: the work is gone, so the term must end too
            self._core.request_step_down()
        self._announce(self._core.pop_events())
        self._poke()

    async def _wait(self, action: Wait) -> None:
        timeout = action.until - time.monotonic()
        if timeout > 0 and not self._woken:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(action.until, _resolve, waiter)
            watch: asyncio.Task[Any] | None = None
            if action.version is not None and type(self.lock).capabilities.watch:
                watch = loop.create_task(self.lock.await_for_change(action.version, timeout))
                watch.add_done_callback(lambda _: _resolve(waiter))
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
                if watch is not None and not watch.done():
                    watch.cancel()
                    with contextlib.suppress(BaseException):
                        await watch
        self._woken = False
        self._core.wait_done()

    async def _follow(self, action: Wait) -> None:
        """A follower's wait: the rest of it runs in a watch-pool thread.

        The thread waits for a change (a blocking watch, where the backend has one) or
        sleeps until the poll time, reads, and hands the result to the core itself, step
        after step, as the thread driver does; the event loop is involved only when the
        core has something to decide that is not another wait (a new leader, an
        acquisition, a failure), when a request wakes the election, or after one
        ``lease_duration`` (the thread then goes back to the pool, shared with every other
        follower). An idle asyncio standby so costs the loop nothing per
        renewal it sees (issue 21). Each step of the thread on the core is atomic with
        respect to the loop taking the election back, and the loop takes it back from a
        thread that is stuck (a watch past its end, or a read past its timeout, by
        ``op_timeout + 1`` seconds), or that no pool thread picked up by the wait's end.
        """
        if action.until <= time.monotonic() or self._woken:
            self._woken = False
            self._core.wait_done()
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        watch = _Watch()
        watch.job = _watch_pool().submit(self._follow_in_thread, watch, action, loop, waiter)
        watch.timer = loop.call_at(action.until, self._check_follow, watch, waiter)
        try:
            await waiter
        finally:
            with watch.guard:
                watch.over = True
                handed, watch.handed = watch.handed, None
            watch.ended.set()
            watch.job.cancel()  # (a stretch that no pool thread picked up yet)
            if watch.timer is not None:
                watch.timer.cancel()
            self._waiter = None
        if handed is not None:
            # the core's next action, decided in the thread: the loop performs it (a pending
            # request, if any, is seen by the core right after)
            self._handed = handed
            return
        # the core's last step was a wait (the thread's or ours)
        self._woken = False
        self._core.wait_done()

    def _check_follow(self, watch: _Watch, waiter: asyncio.Future[Any]) -> None:
        """The loop's bound on a follower's watch thread (see :meth:`_follow`)."""
        if waiter.done():
            return
        mark = watch.mark
        now = time.monotonic()
        bound = None if mark is None else mark + self.timing.op_timeout + 1.0
        if bound is None or now >= bound:
            log.debug("%s: the watch thread %s; the loop takes over", self.name, "did not start" if mark is None else "is stuck")
            watch.timer = None
            _resolve(waiter)
            return
        watch.timer = asyncio.get_running_loop().call_at(bound, self._check_follow, watch, waiter)

    def _follow_in_thread(self, watch: _Watch, wait: Wait, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any]) -> None:
        """A watch thread's part of :meth:`_follow`: wait, read, report to the core, again.

        Whatever it decides on the core reaches the loop in the same step, under ``guard``:
        once ``over`` is set the loop has taken the election back, and the core's last
        step was a wait."""
        core, lock, timing = self._core, self.lock, self.timing
        watches = type(lock).capabilities.watch
        turn_ends = time.monotonic() + timing.lease_duration

        def for_the_loop() -> bool:  # under guard, after a step: does the loop decide next?
            # a new leader is announced on the loop; a turn lasts one lease_duration
            return bool(core.events) or time.monotonic() >= turn_ends or core.phase is not Phase.FOLLOWING

        def hand_back(action: Any) -> None:  # under guard, with over not set
            watch.handed = action
            watch.over = True  # (the loop sets it again; nothing here runs after this)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, waiter)

        try:
            while True:
                watch.mark = wait.until
                timeout = wait.until - time.monotonic()
                hint: Versioned | None = None
                if timeout > 0 and (wait.version is None or not watches):
                    watch.ended.wait(timeout)  # a poll (or nothing to watch yet): sleep, stop wakes it
                elif timeout > 0:
                    try:
                        hint = lock.wait_for_change_hinted(wait.version, timeout)
                    except Exception as exc:  # noqa: BLE001 - a failed watch is only a shorter wait
                        log.debug("%s: wait_for_change failed: %s", self.name, exc)
                        # as the thread driver: pause, or a failing watch would read in a loop
                        watch.ended.wait(min(timeout, timing.retry_period))
                if watch.over or self._stopped:
                    break
                if hint is not None:
                    with watch.guard:
                        if watch.over:
                            return
                        if core.hinted(hint):  # the followed leader renewed: no read
                            following = core.next_action()
                            if not isinstance(following, Wait) or for_the_loop():
                                hand_back(following)
                                return
                            wait = following
                            continue
                watch.mark = time.monotonic()
                try:
                    result: Any = lock.get(timing.op_timeout)
                    ok = True
                except Exception as exc:  # noqa: BLE001 - the read's own failure, for the core
                    result, ok = exc, False
                with watch.guard:
                    if watch.over:
                        return
                    core.wait_done()
                    read = core.next_action()
                    if not isinstance(read, Read):  # a request came in meanwhile: the loop decides
                        hand_back(read)
                        return
                    if ok:
                        core.read_done(result)
                    else:
                        core.failed(result)
                    following = core.next_action()
                    if not isinstance(following, Wait) or for_the_loop():
                        hand_back(following)
                        return
                    wait = following
        except BaseException:  # pragma: no cover - the core is meant never to raise
            log.exception("%s: the watch thread failed; the event loop takes over", self.name)
        # the core's last step was a wait: the loop goes on from there
        with watch.guard:
            if not watch.over:
                hand_back(None)

    async def _await_work(self) -> None:
        """Before a graceful release, let the ended term's work finish (bounded by its deadline)."""
        lead, work = self._leadership, self._work
        if work is None or work.done() or lead is None:
            return
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), max(0.0, lead.deadline - time.monotonic()))
        if not work.done():
            log.warning("%s: on_started_leading did not return before the lease deadline", self.name)

    # --- events ------------------------------------------------------------------------

    def _announce(self, events: Sequence[object]) -> None:
        """Apply the core's events in the step that made them; never runs user code."""
        started: list[AsyncLeadership] = []
        for event in events:
            if isinstance(event, StartedLeading):
                lead = AsyncLeadership(self, event.term, event.token)
                self._leadership = lead
                started.append(lead)
                self._observe_state(True)
            elif isinstance(event, StoppedLeading):
                ending = self._leadership
                if ending is not None and ending.term == event.term:
                    ending._end(self._core.deadline)
                    if self._work_task is not None and not self._work_task.done():
                        self._work_task.cancel()
                self._observe_state(False)
                if self.on_stopped_leading is not None:
                    self._notify(self.on_stopped_leading)
            elif isinstance(event, NewLeader) and self.on_new_leader is not None:
                self._notify(self.on_new_leader, event.identity)
        for lead in started:
            if self.on_started_leading is not None and not lead.lost.is_set():
                self._start_work(lead)
        if events:
            self._changed_now()

    def _start_work(self, lead: AsyncLeadership) -> None:
        assert self.on_started_leading is not None
        loop = asyncio.get_running_loop()
        if _is_async(self.on_started_leading):
            task = loop.create_task(self._run_term(lead), name=f"leader-term-{self.name}-{lead.token}")
            self._work = self._work_task = task
            return
        # a plain function: a thread of its own, with a thread-safe view of the term
        lead.threaded = Leadership(self, lead.term, lead.token)  # type: ignore[arg-type]
        done = loop.create_future()
        self._work, self._work_task = done, None
        _WATCHDOG.arm(self._core.term_end, self)
        threading.Thread(
            target=self._run_thread_term, args=(lead, loop, done), name=f"leader-term-{self.name}-{lead.token}", daemon=True
        ).start()

    async def _run_term(self, lead: AsyncLeadership) -> None:
        assert self.on_started_leading is not None
        if not lead.is_valid():
            return  # the term ended before its work could start
        try:
            await self.on_started_leading(lead)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s: on_started_leading raised; ending this term", self.name)
            if not lead.lost.is_set():
                self.step_down()

    def _run_thread_term(self, lead: AsyncLeadership, loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any]) -> None:
        threaded = lead.threaded
        assert self.on_started_leading is not None and threaded is not None
        try:
            if threaded.is_valid():
                self.on_started_leading(threaded)
        except Exception:
            log.exception("%s: on_started_leading raised; ending this term", self.name)
            if not threaded.lost.is_set():
                self.step_down()
        finally:
            threaded.work_done.set()
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, done)

    def _notify(self, fn: Callback, *args: Any) -> None:
        notices = self._notices
        if notices is None:
            notices = self._notices = []
        notices.append((fn, args))
        notifier = self._notifier
        if notifier is None or notifier.done():
            loop = self._event_loop
            assert loop is not None
            self._notifier = loop.create_task(self._notify_loop(), name=f"leader-notify-{self.name}")

    async def _notify_loop(self) -> None:
        """Deliver ``on_new_leader`` / ``on_stopped_leading`` in order, outside the driver.

        Runs while there are notices, then ends (``_notify`` starts it again)."""
        notices = self._notices
        while notices:
            fn, args = notices.pop(0)
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: leader callback raised", self.name)
                if self.is_leader:
                    self.step_down()

    def _changed_now(self) -> None:
        changed = self._changed
        if changed is not None:
            changed.set()
            self._changed = None  # the next waiter makes a new one
