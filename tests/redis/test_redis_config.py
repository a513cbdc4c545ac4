"""URLs, start-up checks and the errors users see: each names the fix."""

from __future__ import annotations

import time

import pytest
import redis

from celery_leader.backends.redis import VANISHED_HOLDER, RedisBackend, SentinelRedisLock
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend as registry_open
from celery_leader.testing import sample_record
from tests.servers import free_port

from .conftest import RedisServer

T = 5.0


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "rediss", "unix", "redis+sentinel"])
def test_registry_maps_every_scheme_to_this_backend(scheme: str) -> None:
    url = {
        "redis": "redis://127.0.0.1:6379/0",
        "rediss": "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none",
        "unix": "unix:///run/redis/redis.sock?db=2",
        "redis+sentinel": "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
    }[scheme]
    backend = registry_open(url)
    try:
        assert isinstance(backend, RedisBackend)
    finally:
        backend.close()


def test_sentinel_url_declares_weaker_capabilities() -> None:
    backend = RedisBackend.from_url("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/3?prefix=x:")
    try:
        lock = backend.lock("beat")
        assert isinstance(lock, SentinelRedisLock)
        assert type(lock).capabilities.linearizable is False
        assert type(lock).capabilities.partition_safe is False
        assert type(lock).capabilities.watch is True
        assert backend.capabilities.partition_safe is False
        assert backend.prefix == "x:"
    finally:
        backend.close()


def test_single_primary_declares_linearizable() -> None:
    backend = RedisBackend.from_url("redis://127.0.0.1:6379/0")
    try:
        caps = type(backend.lock("beat")).capabilities
        assert caps.linearizable and caps.watch and caps.partition_safe
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("redis://127.0.0.1:6379/0?prefx=a:", ["prefx", "known"]),
        ("redis://127.0.0.1:6379/zero", ["database number"]),
        ("redis://127.0.0.1:6379/0?gc_margin=-1", ["gc_margin"]),
        ("redis://127.0.0.1:6379/0?prefix=", ["prefix"]),
        ("redis://127.0.0.1:6379/0?master=mymaster", ["redis+sentinel"]),
        ("unix://", ["socket path"]),
        ("redis:///0", ["no host"]),
        ("redis+sentinel://127.0.0.1:26379", ["master name"]),
        ("redis+sentinel:///mymaster", ["no sentinels"]),
        ("redis+sentinel://127.0.0.1:x/mymaster", ["sentinel address"]),
    ],
)
def test_bad_urls_name_the_fix(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        RedisBackend.from_url(url)
    for word in words:
        assert word in str(err.value)


def test_describe_never_shows_passwords() -> None:
    backend = RedisBackend.from_url("redis://user:s3cret@127.0.0.1:6379/0?prefix=a:")
    sentinel = RedisBackend.from_url("redis+sentinel://:s3cret@h:26379/m?sentinel_password=t0p")
    try:
        for b in (backend, sentinel):
            assert "s3cret" not in b.describe() and "t0p" not in b.describe()
            assert "s3cret" not in b.lock("x").describe()
    finally:
        backend.close()
        sentinel.close()


# --- start-up errors --------------------------------------------------------------------


def test_connection_refused_is_unavailable_and_quick(open_backend) -> None:
    backend = open_backend(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.check(60.0)
    with pytest.raises(BackendUnavailable):
        backend.lock("x").get(60.0)
    assert time.monotonic() - started < 10.0  # refused at once: waiting out the timeouts would take two minutes


def test_missing_password_is_a_configuration_error(redis_server_factory, open_backend) -> None:
    server: RedisServer = redis_server_factory("--requirepass", "s3cret")
    with pytest.raises(ConfigurationError, match="PASSWORD@"):
        open_backend(server.url).check(T)
    with pytest.raises(ConfigurationError, match="PASSWORD@"):
        open_backend(server.url.replace("redis://", "redis://:wrong@")).check(T)
    good = open_backend(server.url.replace("redis://", "redis://:s3cret@"))
    good.check(T)
    assert good.lock("x").create(sample_record(), T)


def test_wrong_database_is_a_configuration_error(redis_server, open_backend) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    with pytest.raises(ConfigurationError, match="database"):
        open_backend(url).check(T)


def test_user_without_scripting_is_a_configuration_error(redis_server, open_backend) -> None:
    redis_server.client().execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all", "-@scripting")
    url = f"redis://noscript:pw@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ConfigurationError, match="scripts"):
        open_backend(url).check(T)
    with pytest.raises(ConfigurationError, match="permission"):
        open_backend(url).lock("x").get(T)


def test_replica_is_refused_at_start_up(redis_server_factory, open_backend) -> None:
    primary: RedisServer = redis_server_factory(name="primary")
    replica: RedisServer = redis_server_factory("--replicaof", "127.0.0.1", str(primary.port), name="replica")
    with pytest.raises(ConfigurationError, match="replica"):
        open_backend(replica.url).check(T)
    # a write that reaches a replica anyway (a failover under way) is retried, not fatal
    with pytest.raises(BackendUnavailable):
        open_backend(replica.url).lock("x").create(sample_record(), T)
    open_backend(primary.url).check(T)


# --- keys that are not ours -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "hash", "set"])
def test_wrong_type_key_is_reported_and_never_overwritten(kind, prefix, shared_redis, open_backend) -> None:
    key = f"{prefix}lock:beat"
    {"list": lambda: shared_redis.rpush(key, "job"), "hash": lambda: shared_redis.hset(key, "a", "1"),
     "set": lambda: shared_redis.sadd(key, "m")}[kind]()  # fmt: skip
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    for call in (lambda: lock.get(T), lambda: lock.create(sample_record(), T), lambda: lock.update(sample_record(), "v", T)):
        with pytest.raises(ConfigurationError) as err:
            call()
        message = str(err.value)
        assert f"is a {kind}" in message and "?prefix=" in message and "never overwritten" in message
    assert shared_redis.type(key) == kind.encode()


def test_wrong_type_fence_key_is_reported(prefix, shared_redis, open_backend) -> None:
    shared_redis.set(f"{prefix}fence:beat", "someone else's")
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    with pytest.raises(ConfigurationError, match="fence:beat' is a string"):
        lock.create(sample_record(), T)


# --- the fence: tokens never go backwards ---------------------------------------------


def test_deleted_key_reads_as_held_by_nobody_known_with_the_last_token(prefix, shared_redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    v = lock.create(sample_record(transitions=5), T)
    lock.update(sample_record(transitions=6), v, T)
    shared_redis.delete(f"{prefix}lock:beat")
    got = lock.get(T)
    assert got is not None and got.record.holder == VANISHED_HOLDER and got.record.transitions == 6
    assert got.version == "absent:6"
    # a creator that did not see the tombstone cannot restart the count
    with pytest.raises(Conflict):
        lock.create(sample_record(transitions=1), T)
    with pytest.raises(BackendUnavailable, match="never go backwards"):
        lock.update(sample_record(transitions=6), got.version, T)
    v2 = lock.update(sample_record(holder="b", transitions=7), got.version, T)
    again = lock.get(T)
    assert again is not None and again.version == v2 and again.record.transitions == 7


def test_record_rewritten_with_a_lower_token_reads_at_the_fence(prefix, shared_redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    lock.create(sample_record(transitions=9), T)
    shared_redis.set(f"{prefix}lock:beat", b'{"holderIdentity":"x","leaseDurationMilliSeconds":1000,"leaderTransitions":2}')
    got = lock.get(T)
    assert got is not None and got.record.holder == "x" and got.record.transitions == 9
    with pytest.raises(BackendUnavailable, match="fencing token 3"):
        lock.update(sample_record(holder="y", transitions=3), got.version, T)
    lock.update(sample_record(holder="y", transitions=10), got.version, T)


def test_lock_key_expires_only_long_after_the_lease(prefix, shared_redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    lock.create(sample_record(lease_duration=15.0), T)
    ttl = shared_redis.pttl(f"{prefix}lock:beat")
    assert 2 * 15_000 + 60_000 - 5_000 < ttl <= 2 * 15_000 + 60_000
    assert shared_redis.pttl(f"{prefix}fence:beat") == -1  # the fence never expires
    short = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&gc_margin=0").lock("other")
    short.create(sample_record(lease_duration=0.6), T)
    assert 1000 - 500 < shared_redis.pttl(f"{prefix}lock:other") <= 1200


def test_expired_lock_counts_on(prefix, shared_redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&gc_margin=0").lock("beat")
    lock.create(sample_record(lease_duration=0.2, transitions=4), T)
    deadline = time.monotonic() + 10
    while shared_redis.exists(f"{prefix}lock:beat") and time.monotonic() < deadline:
        time.sleep(0.05)
    got = lock.get(T)
    assert got is not None and got.record.holder == VANISHED_HOLDER and got.record.transitions == 4


# --- sharing ----------------------------------------------------------------------------


def test_many_waiters_share_one_pubsub_connection(redis_server, open_backend) -> None:
    import threading

    backend = open_backend(redis_server.url + "?max_connections=3")
    locks = [backend.lock(f"e{i}") for i in range(40)]
    versions = [lock.create(sample_record(), T) for lock in locks]
    woke: dict[int, float] = {}

    def wait(i: int) -> None:
        started = time.monotonic()
        locks[i].wait_for_change(versions[i], 10.0)
        woke[i] = time.monotonic() - started

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(locks))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    clients = redis_server.client().client_list()
    subscribers = [c for c in clients if int(c.get("sub", 0)) or int(c.get("psub", 0))]
    assert len(subscribers) == 1, clients
    normal = [c for c in clients if c["cmd"] not in ("client|list", "subscribe") and not int(c.get("sub", 0))]
    assert len(normal) <= 3, normal  # at most max_connections, not one per election
    locks[7].update(sample_record(holder="b"), versions[7], T)
    time.sleep(0.5)
    assert set(woke) == {7}, woke
    for i, lock in enumerate(locks):
        if i != 7:
            lock.update(sample_record(holder="b"), versions[i], T)
    for t in threads:
        t.join(10)
    assert len(woke) == len(locks)


def test_waiters_recover_when_the_pubsub_connection_is_killed(redis_server, open_backend) -> None:
    import threading

    backend, writer = open_backend(redis_server.url), open_backend(redis_server.url)
    lock = backend.lock("beat")
    version = writer.lock("beat").create(sample_record(), T)
    done = threading.Event()

    def wait() -> None:
        lock.wait_for_change(version, 20.0)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    time.sleep(0.3)
    admin = redis_server.client()
    assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
    writer.lock("beat").update(sample_record(holder="b"), version, T)  # may be published while disconnected
    assert done.wait(5.0), "the waiter missed a change made while its pub/sub connection was down"


def test_closed_backend_refuses_calls(open_backend) -> None:
    backend = open_backend("redis://127.0.0.1:6379/0")
    lock = backend.lock("x")
    backend.close()
    backend.close()
    with pytest.raises(BackendUnavailable):
        lock.get(T)
    with pytest.raises(ConfigurationError):
        backend.lock("y")


def test_unix_socket(redis_server_factory, tmp_path, open_backend) -> None:
    sock = tmp_path / "r.sock"
    server: RedisServer = redis_server_factory("--unixsocket", str(sock), "--unixsocketperm", "700")
    lock = open_backend(f"unix://{sock}?db=1&prefix=u:").lock("beat")
    v = lock.create(sample_record(), T)
    got = lock.get(T)
    assert got is not None and got.version == v
    assert server.client(db=1).exists("u:lock:beat")


def test_shared_redis_untouched_outside_prefix(prefix, shared_redis: redis.Redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    lock.create(sample_record(), T)
    keys = sorted(k.decode() for k in shared_redis.scan_iter(match=prefix + "*"))
    assert keys == [f"{prefix}fence:beat", f"{prefix}lock:beat"]


def test_garbage_over_a_fence_needs_a_token_above_it(prefix, shared_redis, open_backend) -> None:
    lock = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    lock.create(sample_record(transitions=4), T)
    shared_redis.set(f"{prefix}lock:beat", b"\x00garbage")
    got = lock.get(T)
    assert got is not None and got.record.decode_error and got.record.transitions == 4
    assert got.version.startswith("g:")
    # a candidate that never saw token 4 would write 4 (or less): refused, never a duplicate token
    with pytest.raises(BackendUnavailable, match="never go backwards"):
        lock.update(sample_record(holder="fresh", transitions=4), got.version, T)
    lock.update(sample_record(holder="fresh", transitions=5), got.version, T)


def test_forked_child_opens_its_own_connections(prefix, open_backend) -> None:
    import os

    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock = backend.lock("beat")
    v = lock.create(sample_record(), T)
    lock.wait_for_change(v, 0.05)  # the parent has a pub/sub thread and idle connections
    pid = os.fork()
    if pid == 0:  # the child: must not share the parent's sockets
        code = 1
        try:
            got = lock.get(T)
            v2 = lock.update(sample_record(holder="child"), got.version, T)  # type: ignore[union-attr]
            lock.wait_for_change(v2, 0.05)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = lock.get(T)
    assert got is not None and got.record.holder == "child"
    lock.update(sample_record(holder="parent"), got.version, T)


def test_two_waiters_on_one_name_both_wake(prefix, open_backend) -> None:
    import threading

    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    writer = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}").lock("beat")
    v1 = writer.create(sample_record(), T)
    v2 = writer.update(sample_record(holder="b"), v1, T)
    woke: list[str] = []

    def wait(tag: str, version: str) -> None:
        backend.lock("beat").wait_for_change(version, 10.0)
        woke.append(tag)

    first = threading.Thread(target=wait, args=("first", v2), daemon=True)
    first.start()
    time.sleep(0.3)
    # a second waiter registering later must neither consume nor fake the first one's wake-up
    second = threading.Thread(target=wait, args=("second", v2), daemon=True)
    second.start()
    time.sleep(0.3)
    assert woke == []
    writer.update(sample_record(holder="c"), v2, T)
    first.join(5)
    second.join(5)
    assert sorted(woke) == ["first", "second"]


# --- connections ------------------------------------------------------------------------


def test_more_calls_than_connections_wait_for_a_free_one(prefix, shared_redis, open_backend) -> None:
    import threading

    name = f"{prefix}pool".replace(":", "-")
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&max_connections=2&client_name={name}")
    locks = [backend.lock(f"e{i}") for i in range(12)]
    errors: list[BaseException] = []
    done: list[int] = []

    def work(lock) -> None:
        try:
            version = lock.create(sample_record(), 60.0)
            for n in range(30):
                version = lock.update(sample_record(holder=f"h{n}"), version, 60.0)
                lock.get(60.0)
            done.append(1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(lock,), daemon=True) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(done) == len(locks)
    ours = [c for c in shared_redis.client_list() if c.get("name") == name]
    assert 1 <= len(ours) <= 2, ours  # never more than max_connections at once


def test_no_free_connection_within_the_timeout_is_unavailable(prefix, open_backend) -> None:
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&max_connections=1")
    lock = backend.lock("busy")
    held = backend._checkout(5.0)  # the only connection, busy elsewhere
    try:
        with pytest.raises(BackendUnavailable, match="max_connections"):
            lock.get(0.2)
    finally:
        backend._checkin(held, False)
    assert lock.get(5.0) is None  # free again: the call goes through


def test_connections_killed_over_and_over_never_exhaust_the_backend(prefix, shared_redis, open_backend) -> None:
    # Every dropped connection is replaced by a new one. redis-py's pool counts the
    # connections it ever made (100 by default in redis-py 8) and raises MaxConnectionsError
    # past that; the backend must stay usable however many it has replaced.
    name = f"{prefix}killed".replace(":", "-")
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&max_connections=2&client_name={name}")
    lock = backend.lock("victim")
    lock.create(sample_record(), T)
    failed = 0
    for _ in range(250):  # a call on a fresh connection, then one that finds it killed
        try:
            assert lock.get(T) is not None
        except BackendUnavailable:
            failed += 1  # the killed connection, found dead by this call: dropped
        for client in shared_redis.client_list():
            if client.get("name") == name:
                shared_redis.client_kill_filter(_id=client["id"])
    assert failed >= 100  # the connection really was replaced that often
    assert lock.get(T) is not None
    assert lock.get(T) is not None


def test_batches_and_single_calls_have_their_own_connections(prefix, open_backend) -> None:
    from celery_leader.backends.redis import BATCH_CONNECTIONS

    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}&max_connections=1")
    locks = [backend.lock(f"b{i}") for i in range(3)]
    versions = [lock.create(sample_record(), T) for lock in locks]
    held = backend._checkout(5.0)  # every connection for single calls is busy...
    try:
        items = [(lock, sample_record(holder="b"), v) for lock, v in zip(locks, versions)]
        out = backend.update_many(items, T)  # ...and a batch still goes through
        assert all(isinstance(v, str) for v in out), out
    finally:
        backend._checkin(held, True)
    batch_held = [backend._checkout(5.0, batch=True) for _ in range(BATCH_CONNECTIONS)]
    try:
        assert locks[0].get(T) is not None  # every batch connection busy: single calls go on
        with pytest.raises(BackendUnavailable, match="batch connections"):
            backend.update_many([(locks[0], sample_record(holder="c"), out[0])], 0.2)
    finally:
        for conn in batch_held:
            backend._checkin(conn, True, batch=True)
    assert isinstance(backend.update_many([(locks[0], sample_record(holder="c"), out[0])], T)[0], str)
