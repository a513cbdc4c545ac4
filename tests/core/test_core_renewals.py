"""The asyncio driver's renewal scheduler (issue 21): steady leaders are renewed by one
scheduler per (event loop, batch group) without their own tasks, and its bad paths keep
every term's rules.

Each test drives several elections on one memory backend whose batch object is a spy that
can hang a call until the test lets it go, raise, or let another writer in first. Nothing
here asserts a duration: "on time" is shown by a term that ends while the call that would
have renewed it is still hanging.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend, MemoryLock
from celery_leader.core import ElectionCore
from celery_leader.errors import Conflict
from celery_leader.lock import BatchItem, RenewBatch
from celery_leader.record import LeaderRecord

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
#: renewals as often, but terms that survive a loaded machine's hiccups (for tests where no
#: term may end)
STEADY = dict(lease_duration=3.0, renew_deadline=2.0, retry_period=0.2)


class Spy(RenewBatch):
    """Forwards ``update_many`` to the memory store; records each call; can hang, raise or
    run a hook first."""

    def __init__(self, inner: RenewBatch) -> None:
        self.inner = inner
        self.guard = threading.Lock()
        self.calls: list[list[str]] = []  # the lock names of each call
        self.outcomes: list[list[object]] = []
        self.gate = threading.Event()
        self.gate.set()  # open: calls go through
        self.hanging = 0  # calls waiting at the closed gate
        self.returned = 0  # calls that returned after waiting at the gate
        self.raise_next: list[BaseException] = []
        self.raise_always: BaseException | None = None
        #: runs (in the call's thread) before every call is forwarded
        self.before: Callable[[Sequence[BatchItem]], None] | None = None

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        with self.guard:
            self.calls.append([lock.name for lock, _, _ in items])
            exc = self.raise_next.pop(0) if self.raise_next else self.raise_always
            hook = self.before
        if exc is not None:
            raise exc
        if hook is not None:
            hook(items)
        if not self.gate.is_set():
            with self.guard:
                self.hanging += 1
            self.gate.wait(60)  # a broken backend: ignores its timeout
            with self.guard:
                self.hanging -= 1
                self.returned += 1
        out = self.inner.update_many(items, timeout)
        with self.guard:
            self.outcomes.append(list(out))
        return out


class SpiedLock(MemoryLock):
    spy: Spy

    def renew_batch(self) -> RenewBatch:
        return self.spy


def spied_backend() -> tuple[MemoryBackend, Spy]:
    backend = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    spy = Spy(backend._store)

    def lock(name: str) -> SpiedLock:
        made = SpiedLock(backend._store, name)
        made.spy = spy
        return made

    backend.lock = lock  # type: ignore[method-assign]
    return backend, spy


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def elections(
    backend: MemoryBackend, n: int, ended: list[str] | None = None, timing: dict[str, float] = FAST
) -> list[AsyncElection]:
    def on_stopped(name: str) -> Callable[[], None]:
        return lambda: ended.append(name) if ended is not None else None

    return [
        AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", on_stopped_leading=on_stopped(f"job{i}"), **timing)
        for i in range(n)
    ]


def test_steady_leaders_are_renewed_without_waking_their_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every renewal of a steady leader is decided by its core outside any task (in the
    scheduler's timer), and the elections' own tasks do not run at all meanwhile."""
    backend, spy = spied_backend()
    seen: list[tuple[str, bool]] = []  # (election name, called from a task)
    original = ElectionCore.next_action

    def spying(core: ElectionCore, early: float = 0.0) -> Any:
        seen.append((core.name, asyncio.current_task() is not None))
        return original(core, early)

    monkeypatch.setattr(ElectionCore, "next_action", spying)

    async def main() -> None:
        group = elections(backend, 20, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        assert await until(lambda: all(e._sched_state for e in group))  # all parked
        seen.clear()
        calls_before = len(spy.calls)
        await asyncio.sleep(1.5)  # several renewal periods, longer than the lease
        assert all(e.is_leader for e in group)
        renewed = sum(len(names) for names in spy.calls[calls_before:])
        assert renewed >= 20 * 3, renewed
        from_tasks = [name for name, in_task in seen if in_task]
        assert not from_tasks, f"tasks woke for steady renewals: {from_tasks[:5]}"
        assert len(seen) >= renewed  # every renewal was decided by its own core
        assert max(len(names) for names in spy.calls[calls_before:]) > 1  # gathered into batches
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_the_schedulers_heaps_hold_nothing_the_collector_walks() -> None:
    """Issue 21: every parked leader has an entry in the renewal heap (new each retry
    period) and in the term-end heap (new each renew deadline). They are ``(time, stamp)``
    tuples of a float and an int, which CPython stops tracking, so they never count towards
    a full collection (an entry holding its election would, and would be walked by each)."""
    backend, spy = spied_backend()

    async def main() -> None:
        group = elections(backend, 10, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e._sched_state for e in group))  # all parked
        sched = group[0]._sched
        assert sched is not None and all(e._sched is sched for e in group)
        gc.collect()
        entries = [*sched.due, *sched.ends]
        assert len(entries) >= 2 * len(group)
        assert [x for x in entries if gc.is_tracked(x)] == []
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_the_schedulers_timer_keys_lie_on_its_grid_never_after_their_time() -> None:
    """Issue 21: a wake-up per member's term-end check (each at its own instant) cost more
    than the renewals. Every key is on the grid (multiples of ``cadence``), so the timer
    fires at most once per grid point whatever the number of members: a renewal within
    ``early`` before its time (never after), a term-end check before the term's end."""
    backend, spy = spied_backend()

    async def main() -> None:
        group = elections(backend, 20, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e._sched_state for e in group))  # all parked
        sched = group[0]._sched
        assert sched is not None
        grid = sched.cadence
        assert grid == group[0]._early > 0
        for _ in range(3):  # across renewals, not only the first
            await asyncio.sleep(STEADY["retry_period"])
            live = [e for e in group if e._due_stamp >= 0]
            assert live, "no member parked"
            for key, stamp in sched.due:
                e = sched.due_of[stamp]
                if e._due_stamp != stamp:
                    continue  # stale (renewed since)
                steps = key / grid
                assert abs(steps - round(steps)) < 1e-6, (key, grid)
                assert key + e._early >= e._core.next_renew > key
            for key, stamp in sched.ends:
                e = sched.ends_of[stamp]
                if e._end_stamp != stamp:
                    continue
                steps = key / grid
                assert abs(steps - round(steps)) < 1e-6, (key, grid)
                assert key <= e._core.term_end
        assert all(e.is_leader for e in group)
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_the_batch_lane_answers_on_the_loop_and_lets_idle_threads_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's own threads for ``update_many``: an answer or an exception comes back
    on the loop; calls beyond the lane's size wait for a thread; idle threads end and a
    later call starts one again."""
    from celery_leader import aio

    monkeypatch.setattr(aio._Lane, "IDLE", 0.2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lane = aio._Lane(loop, 2)
        answers: list[tuple[Any, Any, bool]] = []
        gate = threading.Event()

        def done(result: Any, exc: BaseException | None) -> None:
            answers.append((result, exc, threading.current_thread() is threading.main_thread()))

        def boom() -> None:
            raise Conflict("no")

        lane.submit(gate.wait, (30,), done)
        lane.submit(gate.wait, (30,), done)
        lane.submit(lambda x: x * 2, (21,), done)  # both threads busy: this one waits
        await asyncio.sleep(0.1)
        assert answers == [] and lane.threads == 2
        gate.set()
        assert await until(lambda: len(answers) == 3)
        assert sorted(str(r) for r, _, _ in answers) == ["42", "True", "True"]
        assert all(on_loop for _, _, on_loop in answers)
        lane.submit(boom, (), done)
        assert await until(lambda: len(answers) == 4)
        assert answers[-1][0] is None and isinstance(answers[-1][1], Conflict)
        assert await until(lambda: lane.threads == 0, timeout=10)  # idle ones ended
        lane.submit(lambda: "again", (), done)
        assert await until(lambda: len(answers) == 5)
        assert answers[-1][:2] == ("again", None)

    asyncio.run(main())


def test_a_hung_batch_ends_every_members_term_while_the_call_still_hangs() -> None:
    backend, spy = spied_backend()
    ended: list[str] = []

    async def main() -> None:
        group = elections(backend, 8, ended)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        leads = [e.leadership for e in group]
        tokens = [lead.token for lead in leads]
        spy.gate.clear()  # every batch from now on hangs until the test opens the gate
        try:
            assert await until(lambda: spy.hanging > 0)
            assert await until(lambda: len(ended) == 8)
            # every term ended while its renewal was still hanging: nobody waited for the call
            assert spy.returned == 0
            assert all(lead.lost.is_set() and not lead.is_valid() for lead in leads)
        finally:
            spy.gate.set()
        # the hung calls now land (nobody else wrote): a late answer never revives a term
        assert await until(lambda: spy.hanging == 0)
        await asyncio.sleep(0.3)
        assert all(lead.lost.is_set() and not lead.is_valid() for lead in leads)
        for e, token in zip(group, tokens):
            if e.leadership is not None:
                assert e.leadership.token > token  # a new term, never the old one continued
        for e in group:
            await e.stop()

    asyncio.run(main())
    assert sorted(set(ended)) == [f"job{i}" for i in range(8)]


def test_a_key_that_lost_its_compare_and_swap_inside_a_batch_ends_only_that_term() -> None:
    backend, spy = spied_backend()
    ended: list[str] = []

    def intruder(items: Sequence[BatchItem]) -> None:
        lock = MemoryLock(backend._store, "job2")
        current = lock.get(1.0)
        assert current is not None
        lock.update(LeaderRecord(holder="intruder", lease_duration=60, transitions=99), current.version, 1.0)

    async def main() -> None:
        group = elections(backend, 5, ended, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))

        done = threading.Event()

        def before(items: Sequence[BatchItem]) -> None:
            # the intruder writes inside the first call that renews job2 together with others
            if not done.is_set() and len(items) > 1 and any(lock.name == "job2" for lock, _, _ in items):
                done.set()
                intruder(items)

        spy.before = before
        assert await until(lambda: not group[2].is_leader)
        assert done.is_set()
        await asyncio.sleep(0.6)  # more renewals of the others
        assert [e.is_leader for e in group] == [True, True, False, True, True]
        assert ended == ["job2"]
        assert group[2].leader == "intruder"
        got = MemoryLock(backend._store, "job2").get(1.0)
        assert got is not None and got.record.holder == "intruder"  # never overwritten
        # in that call job2's item was a Conflict and the others' items landed
        outcomes = [o for o in spy.outcomes if any(isinstance(x, Conflict) for x in o)]
        assert outcomes and all(sum(isinstance(x, Conflict) for x in o) == 1 for o in outcomes)
        assert any(any(isinstance(x, str) for x in o) for o in outcomes)
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_stop_and_step_down_of_members_whose_renewal_is_out() -> None:
    backend, spy = spied_backend()
    ended: list[str] = []

    async def main() -> None:
        # terms long enough that the renewals can hang while the test acts
        group = elections(backend, 4, ended, timing=dict(lease_duration=6.0, renew_deadline=4.0, retry_period=0.5))
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        spy.gate.clear()
        # wait until job1 and job2 both have a renewal hanging
        assert await until(lambda: group[1]._out is not None and group[2]._out is not None and spy.hanging > 0)
        assert all(e._sched_state for e in (group[1], group[2]))
        group[1].step_down()
        stopping = asyncio.ensure_future(group[2].stop())
        await asyncio.sleep(0.05)
        # their tasks wait for the renewal's answer (or its abandonment) before acting
        assert not stopping.done() and group[2]._task is not None and not group[2]._task.done()
        spy.gate.set()
        await stopping
        assert group[2]._task.done()
        store = backend._store

        def released(name: str) -> bool:
            got = MemoryLock(store, name).get(1.0)
            return got is not None and got.record.holder == ""

        assert released("job2")  # stop() returned: released
        assert await until(lambda: not group[1].is_leader and released("job1"))  # the step-down's release
        calls_before = len(spy.calls)
        await asyncio.sleep(1.2)
        assert group[0].is_leader and group[3].is_leader and not group[2].is_leader
        later = {name for names in spy.calls[calls_before:] for name in names}
        assert {"job0", "job3"} <= later and "job2" not in later
        assert sorted(ended) == ["job1", "job2"]
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_an_exception_in_the_batch_call_is_each_members_failure_and_the_scheduler_goes_on() -> None:
    backend, spy = spied_backend()
    ended: list[str] = []

    async def main() -> None:
        group = elections(backend, 6, ended, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        tokens = [e.token for e in group]
        calls_before = len(spy.calls)
        spy.raise_next.append(RuntimeError("the batch exploded (injected)"))
        assert await until(lambda: not spy.raise_next)  # raised once
        await asyncio.sleep(0.8)  # later batches renew again
        assert len(spy.calls) > calls_before + 1
        assert all(e.is_leader for e in group) and [e.token for e in group] == tokens  # no term lost
        assert ended == []
        # every call raises: every term ends (at its end, the tasks take over), none later revived
        spy.raise_always = RuntimeError("the backend is broken (injected)")
        assert await until(lambda: len(ended) == 6)
        assert not any(e.is_leader for e in group)
        spy.raise_always = None
        assert await until(lambda: all(e.is_leader for e in group))
        assert all(e.token > t for e, t in zip(group, tokens))  # new terms
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_a_batch_answer_of_the_wrong_shape_fails_each_member_not_the_scheduler() -> None:
    backend, spy = spied_backend()
    ended: list[str] = []
    short = {"on": False}
    original = spy.update_many

    def wrong(items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        out = original(items, timeout)
        return out[:-1] if short["on"] else out

    spy.update_many = wrong  # type: ignore[method-assign]

    async def main() -> None:
        group = elections(backend, 4, ended)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        short["on"] = True
        assert await until(lambda: len(ended) == 4)  # no renewal counted: every term ends
        short["on"] = False
        assert await until(lambda: all(e.is_leader for e in group))
        for e in group:
            await e.stop()

    asyncio.run(main())


def test_batches_never_wait_for_pool_threads_busy_with_one_off_calls() -> None:
    """After many lost terms the driver's shared call pool is full of reads and
    acquisitions (one call each); the steady leaders' batches have threads of their own."""
    from celery_leader import aio

    backend, spy = spied_backend()
    ended: list[str] = []
    release = threading.Event()

    async def main() -> None:
        group = elections(backend, 10, ended, timing=STEADY)
        for e in group:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in group))
        busy = [aio._call_pool().submit(release.wait, 60) for _ in range(aio.CALL_POOL_SIZE)]
        try:
            before = len(spy.calls)
            # longer than a renew deadline: a renewal waiting for a pool thread would end its term
            await asyncio.sleep(STEADY["renew_deadline"] + 1.0)
            assert not ended, ended
            assert all(e.is_leader for e in group)
            assert len(spy.calls) > before
        finally:
            release.set()
        for f in busy:
            f.result(10)
        for e in group:
            await e.stop()

    asyncio.run(main())
