"""Batched renewals on a real Redis (issue 21): ``RedisBackend.update_many`` pipelines the
same compare-and-swap script per key, so one round trip carries many elections' renewals
while each key is still written only over its own version."""

from __future__ import annotations

import asyncio
import time

from celery_leader.aio import AsyncElection
from celery_leader.backends.redis import RedisBackend
from celery_leader.errors import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.record import LeaderRecord

from .conftest import RedisServer


def rec(holder: str, n: int, token: int = 1) -> LeaderRecord:
    return LeaderRecord(holder=holder, lease_duration=15, transitions=token, renew_time=float(n))


def test_batch_mixes_conflicts_and_successes_and_never_overwrites_a_stale_key(open_backend, prefix) -> None:
    backend: RedisBackend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    locks = [backend.lock(f"job{i}") for i in range(5)]
    versions = [lock.create(rec("me", 0), 2.0) for lock in locks]
    stale1, stale3 = versions[1], versions[3]
    versions[1] = locks[1].update(rec("other", 1, token=2), stale1, 2.0)
    versions[3] = locks[3].update(rec("other", 1, token=2), stale3, 2.0)
    assert all(lock.renew_batch() is backend for lock in locks)
    items = [(locks[i], rec("me", 5), v) for i, v in enumerate([versions[0], stale1, versions[2], stale3, versions[4]])]
    out = backend.update_many(items, 2.0)
    assert [type(o) for o in out] == [str, Conflict, str, Conflict, str]
    for i in (1, 3):  # the stale items did not write: the other writer's record and version stay
        got = locks[i].get(2.0)
        assert got is not None and got.record.holder == "other" and got.version == versions[i]
    for i in (0, 2, 4):  # the others did, and the version returned is the stored one
        got = locks[i].get(2.0)
        assert got is not None and got.version == out[i] and got.record.renew_time == 5.0
    # a version returned by the batch is usable for the next compare-and-swap, one by one
    assert isinstance(locks[0].update(rec("me", 6), out[0], 2.0), str)


def test_batch_refuses_foreign_locks_and_empty_versions_per_item(open_backend, prefix) -> None:
    one = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}a:")
    two = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}b:")
    a, b = one.lock("job"), two.lock("job")
    va = a.create(rec("me", 0), 2.0)
    vb = b.create(rec("me", 0), 2.0)
    out = one.update_many([(b, rec("me", 1), vb), (a, rec("me", 1), ""), (a, rec("me", 1), va)], 2.0)
    assert isinstance(out[0], ConfigurationError) and isinstance(out[1], Conflict) and isinstance(out[2], str)
    assert b.get(2.0).version == vb


def test_a_batch_whose_replies_span_many_socket_reads_keeps_each_answer_with_its_key(
    open_backend, prefix, shared_redis
) -> None:
    """The replies of a large batch arrive over several reads (more than the parser's
    64 KiB buffer), with an error reply among them; each outcome stays with its own item."""
    backend: RedisBackend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    n = 3000
    locks = [backend.lock(f"job{i:04d}") for i in range(n)]
    first = backend.update_many([(lk, rec("me" * 20, 0), "0") for lk in locks[:1]], 2.0)
    assert isinstance(first[0], Conflict)  # nothing there yet: no version matches
    versions = [lock.create(rec("me" * 20, 0), 2.0) for lock in locks]
    shared_redis.delete(locks[1234].key)
    shared_redis.lpush(locks[1234].key, "not ours")  # a WRONGTYPE error reply in the middle
    out = backend.update_many([(lk, rec("me" * 20, 7), v) for lk, v in zip(locks, versions)], 10.0)
    assert len(out) == n
    assert isinstance(out[1234], ConfigurationError) and "not celery-leader's" in str(out[1234])
    rest = [o for i, o in enumerate(out) if i != 1234]
    assert all(isinstance(o, str) for o in rest), [o for o in rest if not isinstance(o, str)][:3]
    for i in (0, 1233, 1235, n - 1):
        got = locks[i].get(2.0)
        assert got is not None and got.version == out[i] and got.record.renew_time == 7.0


def test_a_connection_killed_during_a_batch_fails_it_as_a_whole_and_the_next_goes_through(
    open_backend, prefix, shared_redis
) -> None:
    name = f"{prefix}batch".replace(":", "-")
    backend: RedisBackend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&client_name={name}")
    locks = [backend.lock(f"job{i}") for i in range(3)]
    versions = [lock.create(rec("me", 0), 2.0) for lock in locks]
    out = backend.update_many([(lk, rec("me", 1), v) for lk, v in zip(locks, versions)], 2.0)
    assert all(isinstance(o, str) for o in out)
    killed = 0
    for client in shared_redis.client_list():  # this backend's connections, the batch's included
        if client.get("name") == name:
            shared_redis.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed >= 1
    failures = 0
    for _ in range(3):  # the dead connection fails one call as a whole; the next reconnects
        try:
            out = backend.update_many([(lk, rec("me", 2), v) for lk, v in zip(locks, out)], 2.0)
            break
        except BackendUnavailable:
            failures += 1
    assert all(isinstance(o, str) for o in out), out
    assert [lk.get(2.0).record.renew_time for lk in locks] == [2.0, 2.0, 2.0]
    assert failures <= 1


def test_batch_after_script_flush_reloads_the_script(redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(redis_server.url)
    try:
        locks = [backend.lock(f"job{i}") for i in range(3)]
        versions = [lock.create(rec("me", 0), 2.0) for lock in locks]
        redis_server.client().script_flush()
        out = backend.update_many([(lk, rec("me", 1), v) for lk, v in zip(locks, versions)], 2.0)
        assert all(isinstance(o, str) for o in out)
        assert [lk.get(2.0).version for lk in locks] == out
    finally:
        backend.close()


def test_batch_against_a_paused_server_fails_as_a_whole_within_its_timeout(redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(redis_server.url)
    try:
        locks = [backend.lock(f"job{i}") for i in range(3)]
        versions = [lock.create(rec("me", 0), 2.0) for lock in locks]
        redis_server.pause()
        try:
            started = time.monotonic()
            try:
                backend.update_many([(lk, rec("me", 1), v) for lk, v in zip(locks, versions)], 0.5)
            except BackendUnavailable:
                pass
            else:
                raise AssertionError("a paused server cannot answer")
            assert time.monotonic() - started < 10.0  # bounded by the timeout (0.5 s), not hanging
        finally:
            redis_server.resume()
    finally:
        backend.close()


def test_asyncio_elections_on_redis_renew_in_batches(open_backend, prefix) -> None:
    backend: RedisBackend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    sizes: list[int] = []
    inner = backend.update_many

    def counting(items, timeout):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return inner(items, timeout)

    backend.update_many = counting  # type: ignore[method-assign]

    async def main() -> None:
        elections = [
            AsyncElection(f"job{i}", backend=backend, identity=f"me{i}", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
            for i in range(20)
        ]  # fmt: skip
        for e in elections:
            await e.start()
        deadline = time.monotonic() + 10
        while not all(e.is_leader for e in elections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert all(e.is_leader for e in elections)
        await asyncio.sleep(1.5)  # longer than the lease: only batched renewals kept them
        assert all(e.is_leader for e in elections)
        for e in elections:
            await e.stop()

    asyncio.run(main())
    assert sum(sizes) >= 20 * 5


def test_batch_packing_is_byte_for_byte_redis_pys_own() -> None:
    """The batch packs its commands with hiredis' C packer; the bytes on the wire must be
    exactly what redis-py's packer makes of the same commands (non-ASCII holders, bytes
    that are not UTF-8, large and negative numbers, empty strings)."""
    import redis

    from celery_leader.backends.redis import WRITE_SHA, _packed

    backend = RedisBackend.from_url("redis://127.0.0.1:6379/0?prefix=pack-test:")
    try:
        lock = backend.lock("jöb/1")
        records = [rec("me", 5), rec("h\u00f6lder \u2603\n\"", 7, token=2**62), LeaderRecord(holder="", lease_duration=0.001)]
        commands = [("EVALSHA", WRITE_SHA, 2, lock.key, lock.fence_key, *lock._write_args(r, v))
                    for r, v in zip(records, ["1:2", "", "x" * 300])]  # fmt: skip
        commands.append(("SET", b"\xff\xfe\x00", -17, ""))
        conn = redis.Connection()
        assert b"".join(_packed(conn, commands)) == b"".join(conn.pack_commands(commands))
    finally:
        backend.close()
