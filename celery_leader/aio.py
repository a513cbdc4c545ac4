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
* Renewals of elections whose locks share a :class:`~celery_leader.lock.RenewBatch`
  (``capabilities.batch``: Redis, memory) go out together: what falls due in one turn
  of the loop is one ``update_many`` call (one round trip), each item still a
  compare-and-swap against its own version and each outcome handed back to its own
  election's core. The per-call bound and the deadline timer apply to every election as
  if it had called alone, so a hung batch ends every included term at its deadline.
* The term ends at ``renew_deadline`` after the last successful write was sent, by a
  ``loop.call_at`` timer, even while a call hangs. Cancelling the election's own task (for
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
import inspect
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .core import Create, Finished, NewLeader, Read, StartedLeading, StoppedLeading, Update, Wait
from .election import _WATCHDOG, BaseElection, BaseLeadership, Leadership
from .errors import BackendUnavailable, ElectionStopped
from .lock import BatchItem, Lock, RenewBatch
from .record import LeaderRecord

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


class _Batcher:
    """Collects the renewals due in one turn of the loop for one :class:`RenewBatch`.

    A batch goes out :attr:`DELAY` after its first renewal arrived (or when it is full):
    every hand-over to a pool thread costs far more than one more item, so a short delay
    turns hundreds of small calls per second into a few dozen. The delay only makes the
    write later; the core counts the term from when it *asked* for the renewal (before the
    delay), so it shortens the term, never lengthens it. Up to :attr:`MAX_IN_FLIGHT`
    batches are out at once (a hung one does not stop the others); while they are, new
    renewals accumulate. Every renewal keeps its own future: its election bounds the wait
    as for a lone call.
    """

    MAX_BATCH = 500
    MAX_IN_FLIGHT = 4
    #: seconds a renewal may wait for others to join its batch (at most this fraction of its own timeout)
    DELAY = 0.01
    DELAY_SHARE = 0.05

    def __init__(self, loop: asyncio.AbstractEventLoop, group: RenewBatch) -> None:
        self.loop, self.group = loop, group
        self.pending: list[tuple[BatchItem, float, asyncio.Future[str]]] = []
        self.in_flight = 0
        #: False, True (a flush is queued for this turn) or the timer of a delayed flush
        self.scheduled: bool | asyncio.TimerHandle = False

    def submit(self, lock: Lock, record: LeaderRecord, expected: str, timeout: float) -> asyncio.Future[str]:
        future: asyncio.Future[str] = self.loop.create_future()
        if len(self.pending) > 4 * self.MAX_BATCH:
            # renewals given up by their elections while every batch hung: drop them
            self.pending = [p for p in self.pending if not p[2].done()]
        self.pending.append(((lock, record, expected), time.monotonic() + timeout, future))
        if len(self.pending) >= self.MAX_BATCH:
            self._kick(0.0)
        else:
            self._kick(min(self.DELAY, timeout * self.DELAY_SHARE))
        return future

    def _kick(self, delay: float) -> None:
        if not self.pending or self.in_flight >= self.MAX_IN_FLIGHT:
            return
        if self.scheduled is not False:
            if delay > 0 or self.scheduled is True:
                return  # a flush is already due no later than this one would be
            self.scheduled.cancel()  # full now: go at once
        if delay > 0:
            self.scheduled = self.loop.call_later(delay, self._flush)
        else:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        now = time.monotonic()
        while self.pending and self.in_flight < self.MAX_IN_FLIGHT:
            chunk, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
            live = []
            for entry in chunk:
                if entry[2].done():
                    continue  # its election stopped waiting (term over, or cancelled)
                if entry[1] <= now:
                    entry[2].set_exception(BackendUnavailable("no time left for the renewal"))
                    continue
                live.append(entry)
            if not live:
                continue
            # the call must end within every included renewal's own bound
            timeout = max(0.001, min(entry[1] for entry in live) - now)
            self.in_flight += 1
            call = self.loop.run_in_executor(_call_pool(), self.group.update_many, [e[0] for e in live], timeout)
            call.add_done_callback(functools.partial(self._done, live))

    def _done(self, live: list[tuple[BatchItem, float, asyncio.Future[str]]], call: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        exc = call.exception() if not call.cancelled() else BackendUnavailable("the batch call was cancelled")
        results: list[Any] = [exc] * len(live) if exc is not None else call.result()
        if exc is None and (not isinstance(results, list) or len(results) != len(live)):
            bad = BackendUnavailable(f"{type(self.group).__name__}.update_many answered {len(live)} items wrongly")
            results = [bad] * len(live)
        for (_, _, future), outcome in zip(live, results):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            elif isinstance(outcome, str):
                future.set_result(outcome)
            else:
                future.set_exception(BackendUnavailable(f"update_many gave {type(outcome).__name__}, not a version"))
        self._kick(0.0)


_BATCHERS: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, RenewBatch, _Batcher]] = {}


def _batcher(loop: asyncio.AbstractEventLoop, group: RenewBatch) -> _Batcher:
    """One batcher per (event loop, batch group); forgotten with a closed loop."""
    key = (id(loop), id(group))
    found = _BATCHERS.get(key)
    if found is None or found[0] is not loop or found[1] is not group:
        for k in [k for k, v in _BATCHERS.items() if v[0].is_closed()]:
            del _BATCHERS[k]
        found = _BATCHERS[key] = (loop, group, _Batcher(loop, group))
    return found[2]


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
    """

    def _init_driver(self) -> None:
        """Parameters: see :class:`~celery_leader.election.BaseElection`; callbacks may be coroutines."""
        self._leadership: AsyncLeadership | None = None
        self._work: asyncio.Future[Any] | None = None  # the current term's work (a task, or a thread's future)
        self._work_task: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._notifier: asyncio.Task[Any] | None = None
        self._notices: asyncio.Queue[Any] | None = None
        # wake-ups: a flag plus the future the driver is waiting on (cheaper than an Event per wait)
        self._woken = False
        self._waiter: asyncio.Future[Any] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        # blocking calls go to our pool unless the backend has a native async client
        kind = type(self.lock)
        self._native_async = kind.aget is not Lock.aget or kind.aupdate is not Lock.aupdate
        # renewals go out in batches when the backend declares it can (capabilities.batch)
        # (a lock with its own async calls keeps them)
        self._batch = self.lock.renew_batch() if kind.capabilities.batch and not self._native_async else None

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
            self._changed = asyncio.Event()
            self._notices = asyncio.Queue()
            self._notifier = loop.create_task(self._notify_loop(), name=f"leader-notify-{self.name}")
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
        if self._notifier is not None:
            # on_stopped_leading has run when stop() returns (bounded, as in the thread driver)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._notifier), 5.0)

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
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_until_leader(self, timeout: float | None = None) -> bool:
        assert self._changed is not None, "start() the election first"

        async def until() -> None:
            while not self._term_ready():
                if self._task is not None and self._task.done():
                    return
                assert self._changed is not None
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
            if self._notices is not None:
                self._notices.put_nowait(None)
            self._close()

    async def _loop(self) -> None:
        while True:
            action = self._core.next_action()
            self._announce(self._core.pop_events())
            if isinstance(action, Finished):
                return
            if isinstance(action, Wait):
                await self._wait(action)
                continue
            if isinstance(action, Update) and action.release:
                await self._await_work()
            await self._perform(action)

    def _call(self, action: Read | Create | Update) -> Awaitable[Any]:
        lock = self.lock
        if self._batch is not None and isinstance(action, Update) and not action.release and self._core.leading:
            # a renewal: it joins the batch of its backend; the outcome is still this core's
            return _batcher(asyncio.get_running_loop(), self._batch).submit(
                lock, action.record, action.expected_version, action.timeout
            )
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
            watch = None
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
        if self._notices is not None:
            self._notices.put_nowait((fn, args))

    async def _notify_loop(self) -> None:
        """Deliver ``on_new_leader`` / ``on_stopped_leading`` in order, outside the driver."""
        assert self._notices is not None
        while True:
            item = await self._notices.get()
            if item is None:
                return
            fn, args = item
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
            self._changed = asyncio.Event()
