"""Cold start: the server's own clock, kept with the fence at each write, tells a candidate
that the last term's lease ended long ago, so it takes over at once instead of after a lease.

Every conservative case is tested too: a key deleted by hand (its holder may still lead),
another server (restart, failover), a record somebody else wrote since.
"""

from __future__ import annotations

import logging
import time

import pytest

from celery_leader import Election
from celery_leader.backends.redis import VANISHED_HOLDER
from celery_leader.record import LeaderRecord

# a long lease for the newcomer: waiting it out would take 30 s, taking over at once is instant
NEWCOMER = dict(lease_duration=30.0, renew_deadline=20.0, retry_period=2.0)


def server_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def wait_server_time(client, fence_key: str, beyond_ms: int) -> None:
    """Until the server's clock is past the last write + lease + margin (bounded)."""
    written = int(client.hget(fence_key, "written_ms"))
    lease = int(client.hget(fence_key, "lease_ms"))
    target = written + lease + max(1000, lease // 10) + beyond_ms
    deadline = time.monotonic() + 30
    while server_ms(client) <= target:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def crashed_holder(backend, name: str) -> tuple:
    """A holder that wrote a 1 s lease and died without releasing."""
    lock = backend.lock(name)
    version = lock.create(LeaderRecord(holder="crashed-host", lease_duration=1.0, transitions=1), 5)
    return lock, version


def test_vanished_key_long_after_the_lease_is_free_at_once(prefix, open_backend, shared_redis, caplog):
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}&gc_margin=0"
    backend = open_backend(url)
    lock, _ = crashed_holder(backend, "beat")
    wait_server_time(shared_redis, lock.fence_key, 0)
    deadline = time.monotonic() + 30
    while shared_redis.exists(lock.key):  # the key's own expiry (2 x lease) passes
        assert time.monotonic() < deadline
        time.sleep(0.05)
    caplog.set_level(logging.INFO, logger="celery_leader")
    got = lock.get(5)
    assert got.record.holder == "" and got.record.transitions == 1
    lock.get(5)  # a second read says nothing new
    assert caplog.text.count("no leader since") == 1 and "free to take over" in caplog.text
    assert "crashed-host" not in caplog.text  # the key is gone: its holder is not known any more
    caplog.clear()
    with Election("beat", backend=backend, identity="newcomer", **NEWCOMER) as election:
        assert election.wait_until_leader(10)
        assert election.token == 2
    assert caplog.text.count("no leader since") == 1


def test_a_crashed_holders_record_long_after_its_lease_is_free_at_once(prefix, open_backend, shared_redis, caplog):
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock, version = crashed_holder(backend, "beat")
    wait_server_time(shared_redis, lock.fence_key, 0)
    caplog.set_level(logging.INFO, logger="celery_leader")
    got = lock.get(5)
    assert got.record.holder == "" and got.record.transitions == 1 and got.version == version
    assert "no leader since" in caplog.text and "crashed-host's lease ended" in caplog.text
    with Election("beat", backend=backend, identity="newcomer", **NEWCOMER) as election:
        assert election.wait_until_leader(10)
        assert election.token == 2


def test_within_the_lease_and_margin_the_holder_still_holds(prefix, open_backend):
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock = backend.lock("beat")
    lock.create(LeaderRecord(holder="live-host", lease_duration=30.0, transitions=1), 5)
    assert lock.get(5).record.holder == "live-host"


def test_a_key_deleted_by_hand_is_still_waited_out(prefix, open_backend, shared_redis):
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock = backend.lock("beat")
    lock.create(LeaderRecord(holder="live-host", lease_duration=30.0, transitions=3), 5)
    shared_redis.delete(lock.key)  # its holder may still believe it leads
    assert lock.get(5).record.holder == VANISHED_HOLDER


@pytest.mark.parametrize("change", ["other server", "foreign write", "no clock"])
def test_nothing_is_concluded_without_the_same_server_and_record(prefix, open_backend, shared_redis, change):
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock, _ = crashed_holder(backend, "beat")
    wait_server_time(shared_redis, lock.fence_key, 0)
    if change == "other server":  # written by a server process that is gone (restart, failover)
        shared_redis.hset(lock.fence_key, "server", "0" * 40)
    elif change == "foreign write":  # a writer that does not keep the clock (by hand, other tools)
        raw = shared_redis.get(lock.key)
        shared_redis.set(lock.key, raw.replace(b"crashed-host", b"other-host"), px=60000)
    else:  # a fence from before this change
        shared_redis.hdel(lock.fence_key, "written_ms", "lease_ms", "written_version", "server")
    held = lock.get(5).record.holder
    assert held in ("crashed-host", "other-host")


def test_the_documented_minimal_acl_still_works_without_the_shortcut(redis_server, open_backend):
    """The ACL docs/redis.md names grants no TIME or INFO: writes work, nothing is concluded."""
    redis_server.client().execute_command(
        "ACL", "SETUSER", "leader", "on", ">pw", "~celery-leader:*", "&celery-leader:*",
        "+@read", "+@write", "+@scripting", "+@pubsub", "+ping",
    )  # fmt: skip
    backend = open_backend(f"redis://leader:pw@127.0.0.1:{redis_server.port}/0")
    backend.check(5)
    lock = backend.lock("beat")
    lock.create(LeaderRecord(holder="crashed-host", lease_duration=1.0, transitions=1), 5)
    admin = redis_server.client()
    fence = "celery-leader:fence:beat"
    assert admin.hget(fence, "written_ms") is None  # no clock stored: TIME/INFO not allowed
    time.sleep(2.5)  # past the lease and the margin: with the clock this would read as free
    assert lock.get(5).record.holder == "crashed-host"


@pytest.mark.parametrize("deleted", ["expired", "deleted by hand"])
def test_the_last_slot_outlives_the_lock_key(prefix, open_backend, shared_redis, deleted):
    """A host arriving after the lock key expired (its TTL is ~2 leases) still skips the slot."""
    from celery_leader.once import LAST_SLOT_KEY, run_once_per

    url = f"redis://127.0.0.1:6379/0?prefix={prefix}&gc_margin=0"
    timing = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    runs: list[int] = []
    assert run_once_per(lambda: runs.append(1), name="cron", slot="k", url=url, **timing).ran
    key = f"{prefix}lock:cron"
    if deleted == "deleted by hand":
        shared_redis.delete(key)
    deadline = time.monotonic() + 30
    while shared_redis.exists(key):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    got = open_backend(url).lock("cron").get(5)
    assert got.record.extra[LAST_SLOT_KEY] == "k"
    late = run_once_per(lambda: runs.append(2), name="cron", slot="k", url=url, **timing)
    assert not late.ran and late.reason == "already done" and runs == [1]
