"""Elections against a private redis-server that the tests kill, pause, and tamper with.

Timing: lease 1 s, renew deadline 0.6 s, retry 0.2 s. Safety is asserted exactly (nobody
leads after the old leader's deadline while Redis is away; tokens increase); liveness only
with generous waits.
"""

from __future__ import annotations

import time

from celery_leader import Election
from celery_leader.backends.redis import VANISHED_HOLDER
from tests.elections import LEASE, Watch, leader_of, wait_for

from .conftest import RedisServer


def test_redis_killed_while_leading_then_back(redis_server_factory, elections) -> None:
    # AOF with fsync on every write: the fence (and the lock) survive the restart
    server: RedisServer = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    es = elections(server.url)
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        killed = time.monotonic()
        server.kill()
        # the leader stops by its deadline (< one lease after its last successful renewal)
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 1.0)
        time.sleep(2 * LEASE)
        back = time.monotonic()
        server.start()
        second = wait_for(lambda: leader_of(es))
        resumed = time.monotonic() - back
    assert not watch.overlaps()
    assert watch.leaders_between(killed + LEASE, back) == set(), "somebody led while Redis was down"
    assert second.token is not None and token is not None and second.token > token
    # liveness, generous: the record written before the crash is waited out (one lease), then taken
    assert resumed < 3 * LEASE + 5.0, resumed


def test_redis_paused_while_leading(redis_server, elections) -> None:
    es = elections(redis_server.url)
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        paused = time.monotonic()
        redis_server.pause()
        try:
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            time.sleep(LEASE)
        finally:
            redis_server.resume()
            resumed = time.monotonic()
        wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert watch.leaders_between(paused + LEASE, resumed) == set()
    tokens = watch.tokens()
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_key_deleted_by_hand_token_still_increases(redis_server, elections) -> None:
    es = elections(redis_server.url)
    admin = redis_server.client()
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        deleted = time.monotonic()
        admin.delete("celery-leader:lock:beat")
        # the holder learns at its next renewal; everyone waits one lease before taking over
        wait_for(lambda: not first.is_leader, 5)
        assert any(e.leader == VANISHED_HOLDER for e in es), [e.leader for e in es]
        second = wait_for(lambda: leader_of(es))
        assert second.token is not None and token is not None and second.token > token
    assert not watch.overlaps()
    assert int(admin.hget("celery-leader:fence:beat", "transitions")) == second.token
    # the vanished key was waited out rather than grabbed at once
    gap = [t for t, leaders, _ in watch.samples if t > deleted and not any(leaders)]
    assert gap, "leadership moved on without a pause"


def test_key_overwritten_with_garbage(redis_server, elections) -> None:
    es = elections(redis_server.url)
    admin = redis_server.client()
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        admin.set("celery-leader:lock:beat", b"\x00\xffnot a record")
        wait_for(lambda: not first.is_leader, LEASE + 1.0)
        second = wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert second.token is not None and token is not None and second.token > token
    raw = admin.get("celery-leader:lock:beat")
    assert raw is not None and raw.startswith(b"{")


def test_graceful_handover_is_seen_by_notification(redis_server) -> None:
    # A 2 s retry period: a follower that only polled would see a release after ~1.1 s on
    # average; three handovers all under 0.3 s would be a 1-in-400 fluke for polling.
    url = redis_server.url
    # four candidates: one that stepped down waits a lease before competing again
    es = [
        Election("beat", url=url, identity=f"n{i}", lease_duration=10.0, renew_deadline=6.0, retry_period=2.0)
        for i in range(4)
    ]
    handovers = []
    try:
        for e in es:
            e.start()
        leader = wait_for(lambda: leader_of(es))
        for _ in range(3):
            time.sleep(0.5)  # the followers have read the record and wait for a change
            started = time.monotonic()
            leader.step_down()
            leader = wait_for(lambda old=leader: (lambda e: e if e is not old else None)(leader_of(es)))
            handovers.append(time.monotonic() - started)
    finally:
        for e in es:
            e.stop(timeout=5)
    assert max(handovers) < 0.3, handovers


def test_wrong_type_key_leaves_elections_following(redis_server, elections) -> None:
    admin = redis_server.client()
    admin.rpush("celery-leader:lock:beat", "somebody's queue")
    es = elections(redis_server.url)
    time.sleep(1.5)
    assert not any(e.is_leader for e in es)
    assert admin.type("celery-leader:lock:beat") == b"list" and admin.llen("celery-leader:lock:beat") == 1
