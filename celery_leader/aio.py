"""The asyncio driver: the same :class:`~celery_leader.core.ElectionCore`, as one task.

Lock calls go through the lock's async methods (``aget``/``acreate``/``aupdate``/
``await_for_change``; by default they run the blocking call in a thread). The leader's
deadline is a ``loop.call_at`` timer, so the term ends on time even while a call hangs.

``on_started_leading`` may be a coroutine function: it then runs as a task that is
*cancelled* when the term ends (after ``leadership.lost`` is set), and a graceful release
waits for it to finish, bounded by the term's deadline. Cancelling the election's own task
(for example at loop shutdown) still releases the lock, within ``renew_deadline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
from typing import Any, Awaitable, Callable

from .core import Create, Finished, NewLeader, Read, StartedLeading, StoppedLeading, Update, Wait
from .election import BaseElection, BaseLeadership

__all__ = ["AsyncElection", "AsyncLeadership"]

log = logging.getLogger("celery_leader")


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class AsyncLeadership(BaseLeadership):
    """A term in the asyncio driver: ``lost`` is an :class:`asyncio.Event`."""

    def __init__(self, election: AsyncElection, term: int, token: int) -> None:
        super().__init__(election, term, token)
        self.lost = asyncio.Event()


Callback = Callable[..., Any]


class AsyncElection(BaseElection):
    """Leader election in an event loop (no threads of its own).

    >>> async with AsyncElection("jobs", url="redis://localhost/0") as election:
    ...     await election.wait_until_leader()
    """

    def __init__(self, name: str, **options: Any) -> None:
        """Options: see :class:`~celery_leader.election.BaseElection`; callbacks may be coroutines."""
        super().__init__(name, **options)
        self._work: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        # wake-ups: a flag plus the future the driver is waiting on (cheaper than an Event per wait)
        self._woken = False
        self._waiter: asyncio.Future | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task] = set()

    # --- public API --------------------------------------------------------------------

    async def start(self) -> "AsyncElection":
        """Start electing. A configuration that cannot work raises :class:`ConfigurationError` here."""
        if self._task is None:
            if self.backend is not None:
                await asyncio.to_thread(self.backend.check_once, self.timing.renew_deadline)
            self._event_loop = asyncio.get_running_loop()
            self._changed = asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"leader-election-{self.name}")
        return self

    async def stop(self) -> None:
        """Stop; release the lock if held (bounded by ``renew_deadline``)."""
        self._core.request_stop()
        self._poke()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.timing.renew_deadline + self.timing.op_timeout + 1)
            except asyncio.CancelledError:
                pass
            except asyncio.TimeoutError:
                # as the thread driver: the release is bounded; the lease runs out by itself
                log.warning("%s: the release did not finish in time; the lease will expire", self.name)
        else:
            self._close()

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
            loop.call_soon_threadsafe(self._poke)
            return
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_until_leader(self, timeout: float | None = None) -> bool:
        assert self._changed is not None, "start() the election first"

        async def until() -> None:
            assert self._changed is not None
            async with self._changed:
                while not self._term_ready():
                    if self._task is not None and self._task.done():
                        return
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.25)

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._term_ready()

    async def __aenter__(self) -> "AsyncElection":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the driver loop -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            # cancelled from outside: still release what we hold, then finish cancelling
            self._core.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._loop(), self.timing.renew_deadline)
            raise
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            await self._notify_changed()
            self._close()

    async def _loop(self) -> None:
        while True:
            action = self._core.next_action()
            await self._announce(self._core.pop_events())
            if isinstance(action, Finished):
                return
            if isinstance(action, Wait):
                await self._wait(action)
                continue
            if isinstance(action, Update) and action.release:
                await self._await_work()
            await self._perform(action)

    async def _perform(self, action: Read | Create | Update) -> None:
        try:
            if isinstance(action, Read):
                call: Awaitable[Any] = self.lock.aget(action.timeout)
            elif isinstance(action, Create):
                call = self.lock.acreate(action.record, action.timeout)
            else:
                call = self.lock.aupdate(action.record, action.expected_version, action.timeout)
            # the backend promises to honour the timeout; this bounds a broken one
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(action.timeout + 1.0):
                    result = await call
            else:  # pragma: no cover
                result = await asyncio.wait_for(call, action.timeout + 1.0)
        except asyncio.TimeoutError as exc:
            from .lock import BackendUnavailable

            self._core.failed(BackendUnavailable(f"no answer within {action.timeout} s: {exc}"))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes to the core
            self._core.failed(exc)
            return
        if isinstance(action, Read):
            self._core.read_done(result)
        else:
            self._core.write_done(result)
        if self._core.leading:
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        # the loop's clock is time.monotonic, the same clock as the core's
        self._deadline_timer = loop.call_at(self._core.deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        if self._core.check_deadline():
            task = asyncio.get_running_loop().create_task(self._announce(self._core.pop_events()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
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
        lead, work = self._leadership, self._work
        if work is None or work.done() or lead is None:
            return
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), max(0.0, lead.deadline - time.monotonic()))

    # --- events ------------------------------------------------------------------------

    async def _announce(self, events: list) -> None:
        for event in events:
            if isinstance(event, StartedLeading):
                lead = AsyncLeadership(self, event.term, event.token)
                self._leadership = lead
                if self.on_started_leading is not None:
                    self._work = asyncio.get_running_loop().create_task(self._run_term(lead))
            elif isinstance(event, StoppedLeading):
                lead = self._leadership
                if lead is not None and lead.term == event.term:
                    lead._final_deadline = self._core.deadline
                    lead.lost.set()
                    if self._work is not None and not self._work.done():
                        self._work.cancel()
                if self.on_stopped_leading is not None:
                    await self._call(self.on_stopped_leading)
            elif isinstance(event, NewLeader) and self.on_new_leader is not None:
                await self._call(self.on_new_leader, event.identity)
        if events:
            await self._notify_changed()

    async def _run_term(self, lead: AsyncLeadership) -> None:
        assert self.on_started_leading is not None
        try:
            result = self.on_started_leading(lead)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s: on_started_leading raised; ending this term", self.name)
            if not lead.lost.is_set():
                self.step_down()

    async def _call(self, fn: Callback, *args: Any) -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("%s: leader callback raised", self.name)
            if self.is_leader:
                self.step_down()

    async def _notify_changed(self) -> None:
        if self._changed is None:
            return
        async with self._changed:
            self._changed.notify_all()
