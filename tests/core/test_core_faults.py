"""Random faults against the engine, both drivers: no two terms ever work at once (issue 14, proof).

Three candidates share one in-memory lock through a wrapper that, at random, sends calls
late, answers late, loses answers (the write landed), refuses calls, and hangs calls past
the lease, and answer writes just before the term they start or extend would end (the
announce race: a term that ends as it begins); meanwhile leaders are asked to step down
and candidates are stopped and replaced. Every term's work records its own start and end (when it saw ``lost``), and
the test asserts that no two recorded work intervals overlap, that tokens only grow, and
that nothing still works after everything stopped.

The default run spends ~10 s on one seed per driver; ``CELERY_LEADER_SOAK=1`` runs the soak
variant (60 s per seed, four more seeds).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
import uuid

import pytest

from celery_leader import Election
from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend, MemoryLock
from celery_leader.lock import BackendUnavailable, BatchItem, Lock, RenewBatch

TIMING = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)
CANDIDATES = 3


class FaultyLock(Lock):
    """A memory lock whose calls go wrong at random, the ways a network does."""

    capabilities = MemoryLock.capabilities

    def __init__(self, inner: MemoryLock, rng: random.Random, stats: dict[str, int]) -> None:
        self.inner = inner
        self.name = inner.name
        self.rng = rng
        self.stats = stats

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _call(self, fn, *args, write: bool = False):
        sent = time.monotonic()
        r = self.rng.random()
        if r < 0.05:
            self._count("refused")
            raise BackendUnavailable("refused (injected)")
        if r < 0.15:
            self._count("late send")
            time.sleep(self.rng.uniform(0.0, 0.3))
        elif r < 0.17:
            self._count("hang")
            time.sleep(self.rng.uniform(0.8, 2.0))  # past the lease; then it lands or not
            if self.rng.random() < 0.5:
                raise BackendUnavailable("hung (injected)")
        result = fn(*args)
        r = self.rng.random()
        if write and r < 0.03:
            # answered a hair before renew_deadline after the send: the term begins as it ends
            self._count("answer at the term's end")
            time.sleep(max(0.0, sent + TIMING["renew_deadline"] - self.rng.uniform(0.0, 0.003) - time.monotonic()))
            return result
        if r < 0.05:
            self._count("lost answer")
            raise BackendUnavailable("answer lost (injected)")
        if r < 0.15:
            self._count("late answer")
            time.sleep(self.rng.uniform(0.0, 0.3))
        return result

    def get(self, timeout):
        return self._call(self.inner.get, timeout)

    def create(self, record, timeout):
        return self._call(self.inner.create, record, timeout, write=True)

    def update(self, record, expected_version, timeout):
        return self._call(self.inner.update, record, expected_version, timeout, write=True)

    def wait_for_change(self, version, timeout):
        self.inner.wait_for_change(version, timeout)


class FaultyBatch(RenewBatch):
    """The memory store's ``update_many`` behind the same faults, for a whole batch call
    (a lost answer or a hang then concerns every item: no item's outcome is known)."""

    def __init__(self, backend: MemoryBackend, rng: random.Random, stats: dict[str, int]) -> None:
        self.store = backend._store
        self.faults = FaultyLock(backend.lock("job"), rng, stats)

    def update_many(self, items: list[BatchItem], timeout: float) -> list[str | Exception]:
        self.faults._count("batch")
        inner = [(lock.inner, record, version) for lock, record, version in items]  # type: ignore[attr-defined]
        return self.faults._call(self.store.update_many, inner, timeout, write=True)


class BatchedFaultyLock(FaultyLock):
    """A faulty lock whose renewals the asyncio driver sends through :class:`FaultyBatch`."""

    batch: FaultyBatch

    def renew_batch(self) -> RenewBatch:
        return self.batch


class Record:
    """Work intervals as the work saw them: [who, token, start, end]."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.items: list[list] = []

    def begin(self, who: str, token: int) -> list:
        item = [who, token, time.monotonic(), None]
        with self.guard:
            self.items.append(item)
        return item

    def check(self) -> None:
        with self.guard:
            items = sorted(self.items, key=lambda i: i[2])
        assert len(items) >= 2, f"too few terms to prove anything: {items}"
        running = [i for i in items if i[3] is None]
        assert not running, f"work still running after every candidate stopped: {running}"
        overlaps = [(a, b) for a, b in zip(items, items[1:]) if b[2] < a[3]]
        for i, a in enumerate(items):  # not only neighbours: a long interval may cover several
            overlaps += [(a, b) for b in items[i + 2 :] if b[2] < a[3]]
        assert not overlaps, f"{len(overlaps)} overlapping work intervals, e.g. {overlaps[:3]}"
        tokens = [i[1] for i in items]
        assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}"


def _duration(default: float) -> float:
    return float(os.environ.get("CELERY_LEADER_FAULT_SECONDS", default))


def run_thread_driver(seed: int, seconds: float) -> tuple[Record, dict]:
    rng = random.Random(seed)
    backend = MemoryBackend(uuid.uuid4().hex)
    record, stats = Record(), {}

    def work_for(who: str):
        def work(lead) -> None:
            item = record.begin(who, lead.token)
            lead.lost.wait()
            item[3] = time.monotonic()

        return work

    def make(i: int, gen: int) -> Election:
        who = f"n{i}.{gen}"
        lock = FaultyLock(backend.lock("job"), random.Random(rng.random()), stats)
        return Election("job", lock=lock, identity=who, on_started_leading=work_for(who), **TIMING)

    elections = [make(i, 0).start() for i in range(CANDIDATES)]
    gens = [0] * CANDIDATES
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.1, 0.6))
            i = rng.randrange(CANDIDATES)
            r = rng.random()
            if r < 0.3 and elections[i].is_leader:
                stats["step-down"] = stats.get("step-down", 0) + 1
                elections[i].step_down()
            elif r < 0.45:
                stats["stop/start"] = stats.get("stop/start", 0) + 1
                elections[i].stop()
                gens[i] += 1
                elections[i] = make(i, gens[i]).start()
    finally:
        for e in elections:
            e.stop()
    # a stop() is bounded: give a term whose release gave up its last moments to end
    deadline = time.monotonic() + 5
    while any(i[3] is None for i in record.items) and time.monotonic() < deadline:
        time.sleep(0.05)
    return record, stats


def run_asyncio_driver(seed: int, seconds: float, batch: bool = False) -> tuple[Record, dict]:
    rng = random.Random(seed)
    backend = MemoryBackend(uuid.uuid4().hex)
    record, stats = Record(), {}
    batcher = FaultyBatch(backend, random.Random(rng.random()), stats) if batch else None

    def work_for(who: str, plain: bool):
        if plain:  # a plain function runs in a thread with a threading.Event lost

            def work(lead) -> None:
                item = record.begin(who, lead.token)
                lead.lost.wait()
                item[3] = time.monotonic()

            return work

        async def awork(lead) -> None:
            item = record.begin(who, lead.token)
            try:
                await lead.lost.wait()
            finally:
                item[3] = time.monotonic()

        return awork

    def make(i: int, gen: int) -> AsyncElection:
        who = f"n{i}.{gen}"
        if batcher is not None:
            lock = BatchedFaultyLock(backend.lock("job"), random.Random(rng.random()), stats)
            lock.batch = batcher
        else:
            lock = FaultyLock(backend.lock("job"), random.Random(rng.random()), stats)
        slow_new_leader = lambda identity: asyncio.sleep(rng.uniform(0.0, 1.5))  # noqa: E731 - slow callbacks too
        return AsyncElection("job", lock=lock, identity=who, on_started_leading=work_for(who, plain=i == 0),
                             on_new_leader=slow_new_leader, **TIMING)  # fmt: skip

    async def main() -> None:
        elections = [await make(i, 0).start() for i in range(CANDIDATES)]
        gens = [0] * CANDIDATES
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                await asyncio.sleep(rng.uniform(0.1, 0.6))
                i = rng.randrange(CANDIDATES)
                r = rng.random()
                if r < 0.3 and elections[i].is_leader:
                    stats["step-down"] = stats.get("step-down", 0) + 1
                    elections[i].step_down()
                elif r < 0.45:
                    stats["stop/start"] = stats.get("stop/start", 0) + 1
                    await elections[i].stop()
                    gens[i] += 1
                    elections[i] = await make(i, gens[i]).start()
        finally:
            for e in elections:
                await e.stop()
        deadline = time.monotonic() + 5
        while any(i[3] is None for i in record.items) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    asyncio.run(main())
    return record, stats


DRIVERS = {
    "thread": run_thread_driver,
    "asyncio": run_asyncio_driver,
    # renewals through the scheduler's batch path (update_many), faults on whole calls
    "asyncio-batch": functools.partial(run_asyncio_driver, batch=True),
}


@pytest.mark.parametrize("seed", [1])
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_random_faults_never_let_two_terms_work_at_once(driver: str, seed: int) -> None:
    record, stats = DRIVERS[driver](seed, _duration(10.0))
    record.check()
    assert stats.get("hang", 0) and stats.get("lost answer", 0) and stats.get("stop/start", 0), stats
    if driver == "asyncio-batch":
        assert stats.get("batch", 0) > 10, stats  # renewals did go through update_many


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.parametrize("seed", [2, 11, 12, 13])
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_random_faults_soak(driver: str, seed: int) -> None:
    record, stats = DRIVERS[driver](seed, _duration(60.0))
    record.check()
