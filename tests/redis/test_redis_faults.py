"""Elections against a private redis-server that the tests kill, pause, and tamper with.

Timing: lease 1 s, renew deadline 0.6 s, retry 0.2 s. Safety is asserted exactly (nobody
leads after the old leader's deadline while Redis is away; tokens increase); liveness only
with generous waits.
"""

from __future__ import annotations

import time

from celery_leader.backends.redis import VANISHED_HOLDER
from tests.elections import (
    LEASE,
    lock_deleted_by_hand,
    lock_overwritten_with_garbage,
    outage_then_back,
    paused_while_leading,
    watched_handovers,
)

from .conftest import RedisServer


def test_redis_killed_while_leading_then_back(redis_server_factory, elections) -> None:
    # AOF with fsync on every write: the fence (and the lock) survive the restart
    server: RedisServer = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    es = elections(server.url)
    # liveness: the record written before the crash is waited out (one lease), then taken
    # (outage_then_back waits up to 20 s for the next leader; how soon is benchmarks/redis.py's)
    outage_then_back(es, server.kill, server.start, downtime=2 * LEASE, what="Redis")


def test_redis_paused_while_leading(redis_server, elections) -> None:
    es = elections(redis_server.url)
    tokens = paused_while_leading(es, redis_server.pause, redis_server.resume, what="Redis")
    assert len(set(tokens)) == len(tokens)


def test_key_deleted_by_hand_token_still_increases(redis_server, elections) -> None:
    es = elections(redis_server.url)
    admin = redis_server.client()
    # the vanished key is waited out rather than grabbed at once
    second = lock_deleted_by_hand(es, lambda: admin.delete("celery-leader:lock:beat"), VANISHED_HOLDER)
    assert int(admin.hget("celery-leader:fence:beat", "transitions")) == second.token


def test_key_overwritten_with_garbage(redis_server, elections) -> None:
    es = elections(redis_server.url)
    admin = redis_server.client()
    lock_overwritten_with_garbage(es, lambda: admin.set("celery-leader:lock:beat", b"\x00\xffnot a record"))
    raw = admin.get("celery-leader:lock:beat")
    assert raw is not None and raw.startswith(b"{")


def test_graceful_handover_is_seen_by_notification(redis_server) -> None:
    watched_handovers(redis_server.url)  # followers poll every 30 s: each handover must come from the notification


def test_wrong_type_key_leaves_elections_following(redis_server, elections) -> None:
    admin = redis_server.client()
    admin.rpush("celery-leader:lock:beat", "somebody's queue")
    es = elections(redis_server.url)
    time.sleep(1.5)
    assert not any(e.is_leader for e in es)
    assert admin.type("celery-leader:lock:beat") == b"list" and admin.llen("celery-leader:lock:beat") == 1
