"""Batched renewals (issue 21): the asyncio driver renews the due elections of a backend in
one ``update_many`` call; each item is still its own compare-and-swap, each outcome goes to
its own election, and a hung batch still ends every included term at its deadline.

The memory backend declares ``batch``; a spy around its store counts the batches, so a test
fails if renewals silently went one by one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence

import pytest

from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend, MemoryLock
from celery_leader.core import ElectionCore, Timing
from celery_leader.errors import Conflict
from celery_leader.lock import BatchItem, Capabilities, RenewBatch
from celery_leader.record import LeaderRecord

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


class Spy(RenewBatch):
    """Forwards to the store; records batch sizes; can be made to hang."""

    def __init__(self, inner: RenewBatch) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        self.guard = threading.Lock()

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        with self.guard:
            self.sizes.append(len(items))
        if self.hang.is_set():
            self.release.wait(30)  # a broken backend: ignores its timeout
        return self.inner.update_many(items, timeout)


class SpiedLock(MemoryLock):
    spy: Spy

    def renew_batch(self) -> RenewBatch:
        return self.spy

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        self.spy.single_updates += 1  # type: ignore[attr-defined]
        return super().update(record, expected_version, timeout)


def spied_backend() -> tuple[MemoryBackend, Spy]:
    backend = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    spy = Spy(backend._store)
    spy.single_updates = 0  # type: ignore[attr-defined]

    def lock(name: str) -> SpiedLock:
        made = SpiedLock(backend._store, name)
        made.spy = spy
        return made

    backend.lock = lock  # type: ignore[method-assign]
    return backend, spy


async def until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def record(holder: str, n: int) -> LeaderRecord:
    return LeaderRecord(holder=holder, lease_duration=15, transitions=1, renew_time=float(n))


# --- the backend side: each item is its own compare-and-swap ------------------------------


def test_a_batch_where_some_keys_conflict_and_others_succeed() -> None:
    backend = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    locks = [backend.lock(f"b{i}") for i in range(4)]
    versions = [lock.create(record("me", 0), 1.0) for lock in locks]
    stale = versions[1]
    versions[1] = locks[1].update(record("other", 1), stale, 1.0)  # someone else wrote b1
    batch = locks[0].renew_batch()
    assert batch is not None and all(lock.renew_batch() is batch for lock in locks)
    out = batch.update_many(
        [(locks[0], record("me", 2), versions[0]), (locks[1], record("me", 2), stale),
         (locks[2], record("me", 2), versions[2]), (locks[3], record("me", 2), "no-such-version")],
        1.0,
    )  # fmt: skip
    assert isinstance(out[0], str) and isinstance(out[2], str)
    assert isinstance(out[1], Conflict) and isinstance(out[3], Conflict)
    # the stale item never overwrote: b1 still holds the other writer's record and version
    got = locks[1].get(1.0)
    assert got is not None and got.record.holder == "other" and got.version == versions[1]
    assert locks[3].get(1.0).version == versions[3]
    assert locks[0].get(1.0).version == out[0] and locks[0].get(1.0).record.renew_time == 2.0


def test_a_lock_of_another_store_is_refused_per_item() -> None:
    one = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    two = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    a, b = one.lock("a"), two.lock("b")
    va, vb = a.create(record("me", 0), 1.0), b.create(record("me", 0), 1.0)
    out = one._store.update_many([(a, record("me", 1), va), (b, record("me", 1), vb)], 1.0)
    assert isinstance(out[0], str) and not isinstance(out[1], str)
    assert b.get(1.0).version == vb


# --- the driver side ------------------------------------------------------------------------


def test_renewals_go_out_in_batches_and_each_election_keeps_leading() -> None:
    backend, spy = spied_backend()

    async def main() -> None:
        elections = [AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", **FAST) for i in range(30)]
        for e in elections:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in elections))
        before, singles = len(spy.sizes), spy.single_updates  # type: ignore[attr-defined]
        await asyncio.sleep(1.5)  # several renewal periods, longer than the lease
        assert all(e.is_leader for e in elections)
        assert sum(spy.sizes[before:]) >= 30 * 3  # every election renewed, through batches
        assert max(spy.sizes) > 1  # some went together
        # no renewal went alone (the batch's own item calls are counted by the spy's sizes)
        assert spy.single_updates - singles == sum(spy.sizes[before:])  # type: ignore[attr-defined]
        for e in elections:
            await e.stop()

    asyncio.run(main())


def test_a_conflict_in_a_batch_ends_only_that_term() -> None:
    backend, spy = spied_backend()
    stopped: list[str] = []

    async def main() -> None:
        elections = [
            AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", on_stopped_leading=lambda i=i: stopped.append(f"job{i}"), **FAST)
            for i in range(5)
        ]  # fmt: skip
        for e in elections:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in elections))
        # a foreign writer takes job2 (a compare-and-swap over the current version)
        lock = MemoryLock(backend._store, "job2")
        current = lock.get(1.0)
        lock.update(record("intruder", 9).evolve(lease_duration=60, transitions=99), current.version, 1.0)
        assert await until(lambda: not elections[2].is_leader)
        await asyncio.sleep(0.6)  # more renewals of the others, in batches
        assert [e.is_leader for e in elections] == [True, True, False, True, True]
        assert elections[2].leader == "intruder"
        assert lock.get(1.0).record.holder == "intruder"  # never overwritten by the old holder
        for e in elections:
            await e.stop()

    asyncio.run(main())
    assert stopped.count("job2") == 1 and len(stopped) == 5  # job2 once by the conflict, all at stop


def test_a_backend_without_the_capability_renews_one_by_one() -> None:
    class Plain(MemoryLock):
        capabilities = Capabilities(linearizable=True, watch=True, partition_safe=True)
        updates = 0

        def renew_batch(self) -> RenewBatch:
            raise AssertionError("no batch without the capability")

        def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
            Plain.updates += 1
            return super().update(record, expected_version, timeout)

    backend = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    backend.lock = lambda name: Plain(backend._store, name)  # type: ignore[method-assign]

    async def main() -> None:
        elections = [AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", **FAST) for i in range(5)]
        for e in elections:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in elections))
        await asyncio.sleep(1.2)
        assert all(e.is_leader for e in elections)
        for e in elections:
            await e.stop()

    asyncio.run(main())
    assert Plain.updates >= 5 * 4


def test_a_hung_batch_ends_every_included_term_at_its_deadline() -> None:
    backend, spy = spied_backend()
    ended: dict[str, float] = {}

    async def main() -> None:
        elections = [
            AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", on_stopped_leading=lambda i=i: ended.setdefault(f"job{i}", time.monotonic()), **FAST)
            for i in range(8)
        ]  # fmt: skip
        for e in elections:
            await e.start()
        assert await until(lambda: all(e.is_leader for e in elections))
        spy.hang.set()  # every batch from now on hangs (longer than any timeout)
        hung_at = time.monotonic()
        try:
            assert await until(lambda: len(ended) == 8, timeout=10)
            # each term ended by its own deadline: renew_deadline after its last good write,
            # which was before the hang; is_leader went false no later than that
            assert all(not e.is_leader for e in elections)
            assert max(ended.values()) - hung_at < 0.6 + 0.5
        finally:
            spy.release.set()
        for e in elections:
            await e.stop()

    asyncio.run(main())


def test_leaders_renew_within_one_retry_period_with_jitter() -> None:
    """Renewal times spread (0.9-1.0 x retry_period by default), never later than one period."""

    class Clock:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

        def time(self) -> float:
            return 1e9 + self.now

    draws = iter([0.0, 0.5, 1.0])
    core = ElectionCore("job", "me", Timing(), Clock(), rand=lambda: next(draws))
    periods = [core._renew_period() for _ in range(3)]
    assert periods == pytest.approx([2.0, 1.9, 1.8])
    with pytest.raises(StopIteration):
        core._renew_period()
    wide = ElectionCore("job", "me", Timing(jitter=10.0), Clock(), rand=lambda: 1.0)
    assert wide._renew_period() == pytest.approx(1.0)  # never below half a period
