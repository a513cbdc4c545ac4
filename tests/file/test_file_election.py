"""The election engine on the file:// backend, in one process (threads): handover and stalls."""

from __future__ import annotations

import time
from pathlib import Path

from celery_leader.election import Election

from ..elections import Watch
from .conftest import flock_held_by_other_process

TIMING = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_two_candidates_one_leader_and_release_hands_over(lock_dir: Path) -> None:
    url = f"file://{lock_dir}"
    a = Election("beat", url=url, identity="a", **TIMING).start()
    b = Election("beat", url=url, identity="b", **TIMING).start()
    try:
        assert _wait(lambda: a.is_leader or b.is_leader, 10)
        first, second = (a, b) if a.is_leader else (b, a)
        time.sleep(0.5)  # several renewals: still exactly one leader
        assert first.is_leader and not second.is_leader
        assert second.leader == first.identity
        token = first.token
        assert token is not None
        first.stop()
        assert not first.is_leader
        assert second.wait_until_leader(10), "the standby did not take over after a release"
        assert second.token is not None and second.token > token
    finally:
        a.stop()
        b.stop()


def test_leader_stops_leading_while_the_flock_is_held_elsewhere(lock_dir: Path) -> None:
    """A hung process on the host holds NAME.lock: renewals time out, the leader fails closed."""
    a = Election("beat", url=f"file://{lock_dir}", identity="a", **TIMING).start()
    try:
        assert a.wait_until_leader(10)
        token = a.token
        # sampled only while the file lock is held elsewhere (the watch ends first)
        with flock_held_by_other_process(lock_dir / "beat.lock"), Watch([a]) as watch:
            stalled_at = time.monotonic()
            assert _wait(lambda: not a.is_leader, 5), "leader kept leading without renewals"
            assert _wait(lambda: any(t > stalled_at + 1.0 for t, _, _ in watch.samples), 5)  # past the lease
        # its deadline came from its last successful write, sent before the stall: it led
        # for less than one lease after it (is_leader is judged by the clock, not by luck)
        assert watch.leaders_between(stalled_at + 1.0, time.monotonic()) == set()
        assert a.wait_until_leader(10), "did not lead again once the file lock was free"
        assert a.token is not None and token is not None and a.token >= token
    finally:
        a.stop()


def test_asyncio_driver_hands_over_on_the_file_backend(lock_dir: Path) -> None:
    import asyncio

    from celery_leader.aio import AsyncElection

    async def scenario() -> None:
        url = f"file://{lock_dir}"
        a = await AsyncElection("jobs", url=url, identity="a", **TIMING).start()
        assert await a.wait_until_leader(10)
        b = await AsyncElection("jobs", url=url, identity="b", **TIMING).start()
        try:
            await asyncio.sleep(0.5)
            assert a.is_leader and not b.is_leader and b.leader == "a"
            token = a.token
            await a.stop()
            assert await b.wait_until_leader(10), "the asyncio standby did not take over"
            assert b.token is not None and token is not None and b.token > token
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
