"""The thread and asyncio drivers on the in-process memory backend."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from celery_leader import ConfigurationError, Election
from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend

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


def test_one_leader_among_three_and_graceful_handover(backend):
    terms: list[tuple[str, int]] = []
    stopped: list[str] = []
    elections = [
        Election(
            "job",
            backend=backend,
            identity=f"n{i}",
            on_started_leading=lambda lead: terms.append((lead.identity, lead.token)),
            on_stopped_leading=lambda i=i: stopped.append(f"n{i}"),
            **FAST,
        )
        for i in range(3)
    ]
    for e in elections:
        e.start()
    try:
        assert wait_for(lambda: sum(e.is_leader for e in elections) == 1)
        time.sleep(0.5)  # several renewals: still exactly one
        leaders = [e for e in elections if e.is_leader]
        assert len(leaders) == 1
        first = leaders[0]
        assert first.token == 1 and first.leader == first.identity
        for e in elections:
            assert e.leader == first.identity
        first.stop()
        assert not first.is_leader
        assert wait_for(lambda: sum(e.is_leader for e in elections) == 1, timeout=2.0)
        second = next(e for e in elections if e.is_leader)
        assert second.token == 2
        assert wait_for(lambda: stopped == [first.identity])
    finally:
        for e in elections:
            e.stop()
    assert [t for _, t in terms] == [1, 2, 3][: len(terms)]
    assert len(stopped) == len(terms)  # one stop callback per started term


def test_leader_stops_at_deadline_while_backend_hangs(backend):
    lost = threading.Event()
    election = Election(
        "job", backend=backend, identity="a", on_started_leading=lambda lead: (lead.lost.wait(), lost.set()), **FAST
    )
    with election:
        assert election.wait_until_leader(5)
        lead = election.leadership
        assert lead is not None and lead.is_valid()
        with backend.stalled():
            assert wait_for(lambda: not election.is_leader, timeout=3.0)
            stopped_at = time.monotonic()
            assert stopped_at <= lead.deadline + 0.2
            assert lost.wait(2.0)
            assert not lead.is_valid()
        # the backend is back: it leads again with a new token
        assert election.wait_until_leader(5)
        assert election.token == 2


def test_callback_that_raises_ends_the_term_not_the_elector(backend, caplog):
    calls = []

    def boom(lead):
        calls.append(lead.token)
        if len(calls) == 1:
            raise RuntimeError("user code failed")

    a = Election("job", backend=backend, identity="a", on_started_leading=boom, **FAST)
    b = Election("job", backend=backend, identity="b", **FAST)
    with a:
        assert wait_for(lambda: calls == [1])
        with b:
            assert wait_for(lambda: b.is_leader, timeout=5)  # a stepped down, b took over
            assert not a.is_leader
    assert "on_started_leading raised" in caplog.text


def test_step_down_hands_over(backend):
    a = Election("job", backend=backend, identity="a", **FAST)
    b = Election("job", backend=backend, identity="b", **FAST)
    with a:
        assert a.wait_until_leader(5)
        with b:
            time.sleep(0.3)
            assert not b.is_leader
            a.step_down()
            assert wait_for(lambda: b.is_leader, timeout=2)
            assert b.token == 2 and not a.is_leader


def test_wait_until_leader_times_out_as_follower(backend):
    a = Election("job", backend=backend, identity="a", **FAST)
    b = Election("job", backend=backend, identity="b", **FAST)
    with a:
        assert a.wait_until_leader(5)
        with b:
            assert b.wait_until_leader(0.3) is False
            assert b.leader == "a" and b.token is None and b.leadership is None


def test_bad_configuration_is_refused_before_starting(backend):
    with pytest.raises(ConfigurationError, match="renew_deadline"):
        Election("job", backend=backend, lease_duration=1, renew_deadline=2)
    with pytest.raises(ConfigurationError, match="identity"):
        Election("job", backend=backend, identity="")
    with pytest.raises(ConfigurationError, match="unknown lock URL scheme 'nope'"):
        Election("job", url="nope://x")
    with pytest.raises(ConfigurationError, match="no scheme"):
        Election("job", url="just-a-path")


def test_default_identity_is_unique_per_election(backend):
    a, b = Election("job", backend=backend), Election("job", backend=backend)
    assert a.identity != b.identity and str(__import__("os").getpid()) in a.identity


def test_asyncio_driver_hands_over_and_cancels_work(backend):
    async def main() -> list:
        seen: list = []

        async def work(lead):
            seen.append(("start", lead.token))
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append(("cancelled", lead.token))
                raise

        a = AsyncElection("job", backend=backend, identity="a", on_started_leading=work, **FAST)
        b = AsyncElection("job", backend=backend, identity="b", on_started_leading=work, **FAST)
        await a.start()
        assert await a.wait_until_leader(5)
        await b.start()
        await asyncio.sleep(0.3)
        assert not b.is_leader and b.leader == "a"
        await a.stop()
        assert await b.wait_until_leader(2)
        assert b.token == 2
        # cancelling the election task itself (loop shutdown) still releases
        b._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b._task
        got = backend.lock("job").get(1)
        assert got is not None and got.record.holder == ""
        return seen

    seen = asyncio.run(main())
    assert seen == [("start", 1), ("cancelled", 1), ("start", 2), ("cancelled", 2)]


def test_asyncio_leader_stops_at_deadline_while_backend_hangs(backend):
    async def main() -> None:
        e = AsyncElection("job", backend=backend, identity="a", **FAST)
        async with e:
            assert await e.wait_until_leader(5)
            lead = e.leadership
            with backend.stalled():
                for _ in range(300):
                    if not e.is_leader:
                        break
                    await asyncio.sleep(0.01)
                assert not e.is_leader
                await asyncio.sleep(0.05)
                assert lead.lost.is_set()

    asyncio.run(main())


class _CheckedBackend(MemoryBackend):
    def __init__(self, outcome):
        super().__init__(uuid.uuid4().hex)
        self.outcome, self.calls = outcome, 0

    def check(self, timeout=5.0):
        self.calls += 1
        if self.outcome is not None:
            raise self.outcome


def test_start_refuses_a_configuration_that_cannot_work():
    backend = _CheckedBackend(ConfigurationError("bucket 'x' does not exist: create it"))
    with pytest.raises(ConfigurationError, match="create it"):
        Election("job", backend=backend, **FAST).start()


def test_start_waits_out_an_unreachable_backend_and_checks_once_per_backend():
    from celery_leader import BackendUnavailable

    down = _CheckedBackend(BackendUnavailable("connection refused"))
    e = Election("job", backend=down, **FAST).start()
    e.stop()
    assert down.calls == 1
    ok = _CheckedBackend(None)
    elections = [Election(f"job{i}", backend=ok, **FAST) for i in range(3)]
    for e in elections:
        e.start()
    for e in elections:
        e.stop()
    assert ok.calls == 1


def test_asyncio_standbys_do_not_starve_leaders_renewals():
    """Blocking watches of many standbys must not queue the leaders' renewals (executor starvation)."""
    from celery_leader.testing import sample_record

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        leaders = {}
        for i in range(4):
            e = AsyncElection(f"mine{i}", backend=backend, identity=f"mine{i}", **FAST)
            await e.start()
            assert await e.wait_until_leader(5)
            leaders[e.name] = (e, e.token)
        # locks held elsewhere for a long lease: their standbys sit in watches ~2 s at a time
        standbys = []
        for i in range(6):
            backend.lock(f"theirs{i}").create(sample_record(holder="elsewhere", lease_duration=60), 1.0)
            for k in range(4):
                s = AsyncElection(f"theirs{i}", backend=backend, identity=f"s{i}{k}",
                                  lease_duration=15, renew_deadline=10, retry_period=2)  # fmt: skip
                await s.start()
                standbys.append(s)
        await asyncio.sleep(3.0)  # 15 renewal periods of the leaders
        for name, (e, token) in leaders.items():
            assert e.is_leader and e.token == token, f"{name} lost its term while standbys watched"
        assert not any(s.is_leader for s in standbys)
        for e, _ in leaders.values():
            await e.stop()
        for s in standbys:
            s._task.cancel()

    asyncio.run(main())


def test_an_asyncio_standby_reads_in_its_watch_thread_right_after_each_change():
    """Issue 21: the read that follows a follower's wait is made by the wait's own thread
    (one hand-off to the loop per renewal of the leader, not two); what it reads is what
    the standby acts on, so a takeover after the leader stops still happens, once."""

    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        leader = AsyncElection("job", backend=backend, identity="leader", **FAST)
        await leader.start()
        assert await leader.wait_until_leader(5)
        standby = AsyncElection("job", backend=backend, identity="standby", **FAST)
        threads: list[str] = []
        original = standby.lock.get

        def get(timeout: float):
            threads.append(threading.current_thread().name)
            return original(timeout)

        standby.lock.get = get  # type: ignore[method-assign]
        await standby.start()
        for _ in range(200):  # until it has followed about ten renewals (each one a change)
            if len(threads) >= 12:
                break
            await asyncio.sleep(0.05)
        assert standby.leader == "leader" and not standby.is_leader
        later = threads[2:]  # (its first read comes before any wait)
        assert later and all(name.startswith("celery-leader-watch") for name in later), threads
        await leader.stop()  # released: the standby's wait ends on that change, its read sees it free
        assert await standby.wait_until_leader(5)
        assert not leader.is_leader
        await standby.stop()

    asyncio.run(main())
