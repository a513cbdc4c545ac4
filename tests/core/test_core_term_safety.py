"""No work outlives its term (issue 14): callbacks, the announce race, hung calls, lifecycle.

Each test forces its race (slow constructors, late answers, hanging calls) instead of
hoping for a scheduling accident, and checks the work's own record of when it ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid

import pytest

from celery_leader import Election
from celery_leader import election as election_module
from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend, MemoryLock
from celery_leader.errors import BackendUnavailable, ElectionStopped
from celery_leader.lock import Capabilities, Lock

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


@pytest.fixture
def backend():
    return MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class Intervals:
    """Work intervals as the work itself saw them (monotonic start and end)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.items: list[list] = []  # [who, token, start, end or None]

    def begin(self, who: str, token: int) -> list:
        item = [who, token, time.monotonic(), None]
        with self.guard:
            self.items.append(item)
        return item

    @staticmethod
    def end(item: list) -> None:
        item[3] = time.monotonic()

    def overlaps(self) -> list[tuple]:
        with self.guard:
            items = sorted(self.items, key=lambda i: i[2])
        bad = []
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                a_end = a[3] if a[3] is not None else float("inf")
                if b[2] < a_end:
                    bad.append((tuple(a), tuple(b)))
        return bad

    def running(self) -> list[list]:
        with self.guard:
            return [i for i in self.items if i[3] is None]


class LoopThread:
    """An event loop in a thread of its own (one candidate = one loop, as in separate processes)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- 1. asyncio: slow callbacks never delay the driver; an ended term never starts work ---


def test_asyncio_slow_on_new_leader_neither_delays_renewals_nor_lets_work_outlive_its_term(backend):
    record = Intervals()

    async def slow_new_leader(identity: str) -> None:
        await asyncio.sleep(1.5)  # longer than the lease

    def work_for(who: str):
        async def work(lead) -> None:
            item = record.begin(who, lead.token)
            try:
                await lead.lost.wait()
            finally:
                Intervals.end(item)

        return work

    async def main() -> None:
        a = AsyncElection("job", backend=backend, identity="a", on_new_leader=slow_new_leader,
                          on_started_leading=work_for("a"), **FAST)  # fmt: skip
        b = AsyncElection("job", backend=backend, identity="b", on_new_leader=slow_new_leader,
                          on_started_leading=work_for("b"), **FAST)  # fmt: skip
        await a.start()
        await b.start()
        assert await a.wait_until_leader(5) or await b.wait_until_leader(5)
        await asyncio.sleep(2.5)  # many renewal periods, several slow callbacks
        # renewals were never delayed: still the first term
        leaders = [e for e in (a, b) if e.is_leader]
        assert len(leaders) == 1 and leaders[0].token == 1
        await a.stop()
        await b.stop()

    asyncio.run(main())
    assert record.items, "no term ever started its work"
    assert not record.running(), f"work still running after stop(): {record.running()}"
    assert not record.overlaps()


# --- 2. asyncio: a plain on_started_leading runs in a thread with a thread-safe lost ------


def test_asyncio_plain_on_started_leading_runs_in_a_thread_and_stops_with_its_term(backend):
    record = Intervals()
    kinds: list[str] = []

    def work_for(who: str):
        def work(lead) -> None:  # written as for the thread driver
            kinds.append(type(lead.lost).__module__)
            item = record.begin(who, lead.token)
            escape = time.monotonic() + 4.0  # the old driver never set lost: do not hang the test
            try:
                while not lead.lost.is_set() and time.monotonic() < escape:
                    time.sleep(0.01)
            finally:
                Intervals.end(item)

        return work

    la, lb = LoopThread(), LoopThread()
    try:
        a = AsyncElection("job", backend=backend, identity="a", on_started_leading=work_for("a"), **FAST)
        b = AsyncElection("job", backend=backend, identity="b", on_started_leading=work_for("b"), **FAST)
        la.run(a.start())
        assert la.run(a.wait_until_leader(5))
        lb.run(b.start())
        time.sleep(2.0)  # a's loop must keep renewing while its work loops
        assert a.is_leader and a.token == 1 and not b.is_leader
        la.run(a.stop())
        assert lb.run(b.wait_until_leader(5))
        lb.run(b.stop())
    finally:
        la.close()
        lb.close()
    assert kinds and set(kinds) == {"threading"}
    assert [i[:2] for i in record.items] == [["a", 1], ["b", 2]]
    assert not record.running()
    assert not record.overlaps()


# --- 3. asyncio: hung backend calls never use the loop's default executor -----------------


class HangingLock(Lock):
    """Every call blocks (ignoring its timeout) until released: a broken client library."""

    capabilities = Capabilities(linearizable=True, watch=False, partition_safe=True)

    def __init__(self) -> None:
        self.name = "job"
        self.release = threading.Event()
        self.calls = 0

    def _hang(self):
        self.calls += 1
        self.release.wait(30)
        raise BackendUnavailable("no answer")

    def get(self, timeout):
        return self._hang()

    def create(self, record, timeout):
        return self._hang()

    def update(self, record, expected_version, timeout):
        return self._hang()


class NativeReadHangingWrites(HangingLock):
    """A native async read (the lock is free), blocking writes that hang."""

    async def aget(self, timeout):
        return None


@pytest.mark.parametrize("lock_class", [HangingLock, NativeReadHangingWrites], ids=["blocking", "native-read"])
def test_asyncio_hung_calls_do_not_starve_the_applications_to_thread(lock_class):
    lock = lock_class()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
        e = AsyncElection("job", lock=lock, **FAST)
        await e.start()
        try:
            # more hung calls than the default executor has threads
            for _ in range(200):
                if lock.calls >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5.0) == 42
        finally:
            lock.release.set()
            await e.stop()

    asyncio.run(main())


# --- 4. thread driver: a term's Leadership exists before the term can end -----------------


def test_thread_driver_term_cannot_end_before_its_leadership_exists(backend, monkeypatch):
    """Force the watchdog to fire while the driver is still creating the term's Leadership."""
    real = election_module.Leadership
    first = threading.Event()

    class SlowLeadership(real):
        def __init__(self, election, term, token):
            if not first.is_set():
                first.set()
                # hold the driver here until the term is over (the watchdog fires meanwhile)
                until = election._core.deadline + 0.3
                while time.monotonic() < until:
                    time.sleep(0.01)
            super().__init__(election, term, token)

    monkeypatch.setattr(election_module, "Leadership", SlowLeadership)
    seen: list[list] = []

    def work(lead) -> None:
        item = [lead.token, lead.is_valid(), None]
        seen.append(item)
        item[2] = lead.lost.wait(5.0)

    e = Election("job", backend=backend, identity="a", on_started_leading=work, **FAST)
    with e:
        assert first.wait(5)
        assert wait_for(lambda: e.is_leader and e.token >= 2, timeout=10)  # it carries on with later terms
    assert wait_for(lambda: seen and all(item[2] is not None for item in seen), timeout=10)
    for token, valid_at_start, lost_seen in seen:
        assert valid_at_start, f"term {token}'s work started after the term had ended"
        assert lost_seen, f"term {token} ended but its lost was never set"


# --- 9. lifecycle -------------------------------------------------------------------------


class LateAnswerLock(MemoryLock):
    """The acquisition lands at once, but its answer comes late."""

    def __init__(self, backend: MemoryBackend, delay: float) -> None:
        super().__init__(backend._store, "job")
        self.delay = delay
        self.in_flight = threading.Event()

    def create(self, record, timeout):
        version = super().create(record, timeout)
        self.in_flight.set()
        time.sleep(self.delay)
        return version


def test_stop_during_an_acquisition_returns_only_after_the_release(backend):
    lock = LateAnswerLock(backend, delay=0.8)
    e = Election("job", lock=lock, identity="a", **FAST).start()
    assert lock.in_flight.wait(5)
    e.stop()
    got = backend.lock("job").get(1.0)
    assert got is not None and got.record.holder == "", "stop() returned while this process held the lock"
    assert not e.is_leader


def test_start_after_stop_raises_in_both_drivers(backend):
    e = Election("job", backend=backend, **FAST).start()
    e.stop()
    with pytest.raises(ElectionStopped, match="create a new Election"):
        e.start()
    never = Election("job", backend=backend, **FAST)
    never.stop()
    with pytest.raises(ElectionStopped):
        never.start()

    async def main() -> None:
        a = AsyncElection("job", backend=backend, **FAST)
        await a.start()
        await a.stop()
        with pytest.raises(ElectionStopped, match="create a new AsyncElection"):
            await a.start()

    asyncio.run(main())


def test_stop_from_inside_on_started_leading_does_not_wait_for_the_lease_deadline(backend):
    returned = threading.Event()
    holder: list[Election] = []

    def work(lead) -> None:
        holder[0].stop()
        returned.set()

    e = Election("job", backend=backend, identity="a", on_started_leading=work,
                 lease_duration=15, renew_deadline=10, retry_period=2)  # fmt: skip
    holder.append(e)
    e.start()
    try:
        assert returned.wait(5.0), "stop() inside the callback blocked (until the lease deadline)"
        # the callback returned: the driver releases at once
        assert wait_for(lambda: backend.lock("job").get(1.0).record.holder == "", timeout=5.0)
    finally:
        e.stop()


def test_asyncio_stop_from_inside_on_started_leading_returns(backend):
    async def main() -> None:
        done = asyncio.Event()
        box: list[AsyncElection] = []

        async def work(lead) -> None:
            await box[0].stop()
            done.set()

        e = AsyncElection("job", backend=backend, identity="a", on_started_leading=work,
                          lease_duration=15, renew_deadline=10, retry_period=2)  # fmt: skip
        box.append(e)
        await e.start()
        await asyncio.wait_for(done.wait(), 5.0)
        await asyncio.wait_for(e._task, 5.0)  # released and finished without the lease deadline
        got = backend.lock("job").get(1.0)
        assert got is not None and got.record.holder == ""

    asyncio.run(main())


def test_asyncio_plain_work_sees_lost_on_time_even_while_the_loop_is_blocked(backend):
    """The documented limit: a blocked loop cannot run its term-end timer, so the process
    watchdog ends a plain (threaded) on_started_leading's term on time."""
    seen: dict[str, float] = {}
    started = threading.Event()

    def work(lead) -> None:
        started.set()
        lead.lost.wait(10)
        seen["lost"] = time.monotonic()

    async def main() -> None:
        e = AsyncElection("job", backend=backend, identity="a", on_started_leading=work, **FAST)
        await e.start()
        assert await e.wait_until_leader(5)
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        blocked_at = time.monotonic()
        time.sleep(2.0)  # application code blocking the loop, far past the term's end
        seen["unblocked"] = time.monotonic()
        seen["blocked"] = blocked_at
        await e.stop()

    asyncio.run(main())
    assert "lost" in seen, "the plain work never saw its term end"
    assert seen["lost"] < seen["unblocked"], "the work ran on until the loop was unblocked"


# --- a release that does not finish: the stop says so ---------------------------------------


class StuckReleaseLock(MemoryLock):
    """Writes land at once, except the release, which hangs (ignoring its timeout)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unstick = threading.Event()
        self.releasing = threading.Event()

    def update(self, record, expected_version, timeout):
        if record.holder == "":
            self.releasing.set()
            self.unstick.wait(30)
            raise BackendUnavailable("no answer")
        return super().update(record, expected_version, timeout)


def _stuck_release_lock() -> StuckReleaseLock:
    backend = MemoryBackend(uuid.uuid4().hex)
    return StuckReleaseLock(backend._store, "job")


def test_thread_driver_stop_says_when_the_release_did_not_finish(caplog):
    """``stop()`` returns after its bound while the release hangs; the caller (``run``,
    exiting on SIGTERM) leaves the lock to its lease, and the log says so."""
    lock = _stuck_release_lock()
    e = Election("job", lock=lock, identity="a", **FAST).start()
    try:
        assert e.wait_until_leader(5)
        with caplog.at_level("INFO", logger="celery_leader"):
            e.stop()
        assert lock.releasing.is_set()
        said = [r.getMessage() for r in caplog.records]
        assert "job: the release did not finish in time; the lease will expire" in said, said
    finally:
        lock.unstick.set()


def test_asyncio_stop_says_when_the_release_did_not_finish(caplog):
    """The asyncio driver abandons a call past its own bound, so the core itself gives up
    the release at ``renew_deadline`` and says so."""
    lock = _stuck_release_lock()

    async def main() -> None:
        e = AsyncElection("job", lock=lock, identity="a", **FAST)
        await e.start()
        assert await e.wait_until_leader(5)
        with caplog.at_level("INFO", logger="celery_leader"):
            await e.stop()
        assert lock.releasing.is_set()

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        lock.unstick.set()
    said = [r.getMessage() for r in caplog.records]
    assert "job: could not release the lock within renew_deadline; it will expire" in said, said
