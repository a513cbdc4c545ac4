"""The asyncio driver's standby (issue 21): a follower's waits, and the reads after them,
run in a watch thread that reports to the core itself and involves the event loop only when
there is something to decide.

These tests count where the core is stepped (on the loop's thread or elsewhere) and show
the loop taking the election back from a watch thread that is stuck, that never started,
or whose watch keeps failing. Locks are memory locks wrapped to misbehave.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from celery_leader import Election
from celery_leader import lock as lock_module
from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend, MemoryLock
from celery_leader.core import ElectionCore
from celery_leader.errors import BackendUnavailable, Conflict
from celery_leader.lock import Capabilities, Lock
from celery_leader.testing import sample_record

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


class Misbehaving(Lock):
    """A memory lock whose watch can hang past its timeout or fail at once, and whose reads
    can hang when made in a watch thread. ``release`` ends every hang."""

    capabilities = MemoryLock.capabilities

    def __init__(self, inner: MemoryLock) -> None:
        self.inner = inner
        self.name = inner.name
        self.release = threading.Event()
        self.hang_watch = False
        self.fail_watch = False
        self.hang_reads_in_watch_threads = False
        self.reads: list[tuple[float, str]] = []  # (when, thread name)
        self.watch_threads: set[str] = set()

    def get(self, timeout: float) -> Any:
        name = threading.current_thread().name
        self.reads.append((time.monotonic(), name))
        if self.hang_reads_in_watch_threads and name.startswith("celery-leader-watch"):
            self.release.wait(30)
        return self.inner.get(timeout)

    def create(self, record, timeout):
        return self.inner.create(record, timeout)

    def update(self, record, expected_version, timeout):
        return self.inner.update(record, expected_version, timeout)

    def wait_for_change(self, version, timeout):
        self.watch_threads.add(threading.current_thread().name)
        if self.fail_watch:
            raise BackendUnavailable("watch refused (injected)")
        if self.hang_watch:
            self.release.wait(30)  # past its timeout, as a broken client would
            return
        self.inner.wait_for_change(version, timeout)


class Polled(Misbehaving):
    """The same lock without a watch: standbys poll it every ``retry_period``."""

    capabilities = Capabilities(linearizable=True, watch=False, partition_safe=True)


class CountingCore(ElectionCore):
    """The core, counting the threads its ``next_action`` is called from."""

    __slots__ = ()
    calls: dict[int, list[str]] = {}

    def next_action(self):  # type: ignore[override]
        CountingCore.calls.setdefault(id(self), []).append(threading.current_thread().name)
        return super().next_action()


def counting(election: AsyncElection) -> list[str]:
    election._core.__class__ = CountingCore
    return CountingCore.calls.setdefault(id(election._core), [])


def in_follow_thread() -> bool:
    """Is some thread inside a standby's watch-thread stretch now?"""
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_follow_in_thread":
                return True
            frame = frame.f_back
    return False


def ghost(backend: MemoryBackend, name: str, lease: float) -> None:
    """A record of a holder that is gone (it never renews)."""
    backend.lock(name).create(sample_record(holder="ghost", lease_duration=lease), 1.0)


@pytest.mark.parametrize("kind", [Misbehaving, Polled], ids=["watched", "polled"])
def test_the_loop_is_not_stepped_for_each_read_of_an_asyncio_standby(kind: type[Misbehaving]):
    """While the leader renews ten times a second, the standby reads after each change (or
    each poll, every ``retry_period``) in a watch-pool thread, but its core is stepped on
    the loop's thread only about once per ``lease_duration`` (when the thread's turn
    ends), not once per read."""
    timing = dict(lease_duration=3.0, renew_deadline=2.0, retry_period=0.1)

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        leader = Election("job", backend=backend, identity="leader", **timing).start()
        try:
            assert leader.wait_until_leader(5)
            lock = kind(backend.lock("job"))
            standby = AsyncElection("job", lock=lock, identity="standby", **timing)
            on_loop = counting(standby)
            loop_thread = threading.current_thread().name
            await standby.start()
            while standby.leader != "leader":
                await asyncio.sleep(0.01)
            reads0, steps0, t0 = len(lock.reads), on_loop.count(loop_thread), time.monotonic()
            while len(lock.reads) - reads0 < 20:  # twenty reads
                await asyncio.sleep(0.05)
            span = time.monotonic() - t0
            steps = on_loop.count(loop_thread) - steps0
            assert steps <= 2 + span / timing["lease_duration"], (steps, span, on_loop[-30:])
            assert all(name.startswith("celery-leader-watch") for _, name in lock.reads[reads0:])
            assert standby.leader == "leader" and not standby.is_leader
            await standby.stop()
        finally:
            leader.stop()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["watch hangs past its timeout", "read hangs in the watch thread"])
def test_the_loop_takes_a_standby_back_from_a_stuck_watch_thread(how: str):
    """A watch thread that is stuck does not keep the standby from taking over a lease that
    ran out: the loop takes the election back ``op_timeout + 1`` s after the thread should
    have moved on, and reads through its call pool."""

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        lock = Misbehaving(backend.lock("job"))
        if how.startswith("watch"):
            lock.hang_watch = True
        else:
            lock.hang_reads_in_watch_threads = True
        ghost(backend, "job", lease=1.0)
        standby = AsyncElection("job", lock=lock, identity="standby", **FAST)
        try:
            await standby.start()
            assert await standby.wait_until_leader(15), "the standby never took over"
            assert standby.token is not None
            assert any(name.startswith("celery-leader-call") for _, name in lock.reads)
            if how.startswith("read"):
                assert any(name.startswith("celery-leader-watch") for _, name in lock.reads)
            await asyncio.wait_for(standby.stop(), 10)
        finally:
            lock.release.set()

    asyncio.run(main())


def test_a_failing_watch_does_not_make_an_asyncio_standby_read_in_a_loop():
    """A watch that fails at once is only a shorter wait: the watch thread pauses (up to a
    retry period) before it reads again, as the thread driver does."""

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        lock = Misbehaving(backend.lock("job"))
        lock.fail_watch = True
        ghost(backend, "job", lease=60.0)
        standby = AsyncElection("job", lock=lock, identity="standby", **FAST)
        await standby.start()
        while standby.leader != "ghost":
            await asyncio.sleep(0.01)
        n0, t0 = len(lock.reads), time.monotonic()
        await asyncio.sleep(1.0)
        reads, span = len(lock.reads) - n0, time.monotonic() - t0
        # one read per retry period (0.2 s), with room; a read loop makes thousands
        assert reads <= 2 + 2 * span / FAST["retry_period"], reads
        assert not standby.is_leader
        await asyncio.wait_for(standby.stop(), 10)

    asyncio.run(main())


def test_standbys_beyond_the_watch_pool_still_follow_and_one_takes_over(monkeypatch):
    """With every watch thread taken, a standby's watch stretch waits in the pool's queue; the
    loop takes it back at the wait's end and reads itself, so it still follows and can
    take over (exactly one does)."""
    monkeypatch.setattr(lock_module, "_WATCH_POOL", concurrent.futures.ThreadPoolExecutor(2, "celery-leader-watch"))

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        ghost(backend, "job", lease=1.0)
        seen: dict[str, list[str]] = {}

        def make(i: int) -> AsyncElection:
            who = f"s{i}"
            seen[who] = []
            return AsyncElection("job", backend=backend, identity=who, on_new_leader=seen[who].append, **FAST)

        standbys = [await make(i).start() for i in range(6)]
        try:
            deadline = time.monotonic() + 15
            while not any(s.is_leader for s in standbys) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            leaders = [s.identity for s in standbys if s.is_leader]
            assert len(leaders) == 1, leaders
            while time.monotonic() < deadline and not all(s.leader == leaders[0] for s in standbys):
                await asyncio.sleep(0.05)
            assert all(s.leader == leaders[0] for s in standbys), [s.leader for s in standbys]
            await asyncio.sleep(0.1)  # on_new_leader runs in the notifier task
            others = [who for who in seen if who != leaders[0]]
            assert all(seen[who][-1:] == leaders for who in others), seen
        finally:
            for s in standbys:
                await asyncio.wait_for(s.stop(), 10)

    try:
        asyncio.run(main())
    finally:
        lock_module._WATCH_POOL.shutdown(wait=False)


def test_a_new_leader_seen_in_the_watch_thread_is_announced_on_the_loop():
    """A change of holder, read in the watch thread, comes back to the loop as the core's
    event: ``on_new_leader`` runs there, with each new holder in turn."""

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        first = Election("job", backend=backend, identity="first", **FAST).start()
        second = Election("job", backend=backend, identity="second", **FAST)
        try:
            assert first.wait_until_leader(5)
            seen: list[tuple[str, str]] = []

            def on_new_leader(who: str) -> None:
                seen.append((who, threading.current_thread().name))

            standby = AsyncElection("job", backend=backend, identity="standby", on_new_leader=on_new_leader,
                                    lease_duration=30, renew_deadline=20, retry_period=0.2)  # fmt: skip
            await standby.start()
            while [w for w, _ in seen] != ["first"]:
                await asyncio.sleep(0.01)
            second.start()
            # hand over to ``second`` by name, as ``celery-leader step-down --to`` does: a
            # plain release would let the standby race the second candidate for the lock
            lock = backend.lock("job")
            for _ in range(50):  # the leader renews meanwhile: read again after a Conflict
                got = lock.get(5)
                assert got is not None and got.record.holder == "first"
                try:
                    lock.update(got.record.evolve(preferred_holder="second"), got.version, 5)
                    break
                except Conflict:
                    continue
            assert await asyncio.to_thread(second.wait_until_leader, 5)
            while [w for w, _ in seen] != ["first", "second"]:
                await asyncio.sleep(0.01)
            loop_thread = threading.current_thread().name
            assert {t for _, t in seen} == {loop_thread}
            assert not standby.is_leader
            await standby.stop()
        finally:
            first.stop()
            second.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_stop_wakes_a_polling_standbys_sleeping_thread(monkeypatch):
    """On a backend without a watch the standby's thread sleeps until its next poll; a stop
    wakes it, so its pool thread is free at once, not after the poll interval."""
    pool = concurrent.futures.ThreadPoolExecutor(1, "celery-leader-watch")
    monkeypatch.setattr(lock_module, "_WATCH_POOL", pool)

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        ghost(backend, "job", lease=120.0)
        lock = Polled(backend.lock("job"))
        standby = AsyncElection("job", lock=lock, identity="standby", lease_duration=60, renew_deadline=40, retry_period=20)
        await standby.start()
        while not in_follow_thread():  # its stretch began: the pool's thread sleeps in it
            await asyncio.sleep(0.01)
        await standby.stop()
        # the only pool thread was asleep until the next poll, 20 s away
        free = asyncio.wrap_future(pool.submit(lambda: None))
        await asyncio.wait_for(free, 5.0)

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=False)
