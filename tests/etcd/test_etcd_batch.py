"""Batched renewals on a real etcd (issue 21): ``EtcdBackend.update_many`` sends many
renewals in one ``kv/txn`` whose success operations are nested transactions, one per
lock, each comparing that lock's own keys; anything else goes through the lock's own
``update``."""

from __future__ import annotations

import time
from collections.abc import Callable

from celery_leader.backends.etcd import TXN_RENEWALS, EtcdBackend, EtcdLock
from celery_leader.errors import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.lock import RenewBatch
from celery_leader.record import LeaderRecord
from tests.batches import assert_renewed_in_batches

from .conftest import EtcdCluster


def rec(holder: str, n: int, token: int = 1) -> LeaderRecord:
    return LeaderRecord(holder=holder, lease_duration=15, transitions=token, renew_time=float(n))


def counted(backend: EtcdBackend) -> list[str]:
    """The paths of the backend's requests (each one round trip)."""
    paths: list[str] = []
    inner = backend.call

    def counting(path, body, timeout, **kwargs):  # type: ignore[no-untyped-def]
        paths.append(path)
        return inner(path, body, timeout, **kwargs)

    backend.call = counting  # type: ignore[method-assign]
    return paths


def test_capability_and_batch_object(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    assert EtcdLock.capabilities.batch and backend.capabilities.batch
    assert backend.lock("job").renew_batch() is backend and isinstance(backend, RenewBatch)


def test_renewals_land_in_one_transaction_and_return_the_versions_in_order(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    locks = [backend.lock(f"job{i}") for i in range(20)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    paths = counted(backend)
    out = backend.update_many([(lock, rec("me", 1), v) for lock, v in zip(locks, versions)][::-1], 5.0)
    assert paths == ["kv/txn"], "one transaction for every renewal"
    assert all(isinstance(o, str) for o in out)
    assert len(set(out)) == 1 and out[0].endswith(":1")  # one transaction, one revision; the fence as it was
    for lock, version in zip(locks, out[::-1]):
        got = lock.get(5.0)
        assert got is not None and got.version == version and got.record.renew_time == 1.0
    assert etcd_server.get(f"{prefix}/fence/job0") == b"1"
    # a version returned by the batch is usable for the next compare-and-swap, one by one and batched
    assert isinstance(locks[0].update(rec("me", 2), out[-1], 5.0), str)
    again = backend.update_many([(lock, rec("me", 3), lock.get(5.0).version) for lock in locks], 5.0)
    assert all(isinstance(o, str) for o in again)


def test_more_renewals_than_one_transaction_takes_go_in_several(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    n = 2 * TXN_RENEWALS + 10
    locks = [backend.lock(f"job{i}") for i in range(n)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    paths = counted(backend)
    out = backend.update_many([(lock, rec("me", 1), v) for lock, v in zip(locks, versions)], 10.0)
    assert paths == ["kv/txn"] * 3
    assert all(isinstance(o, str) for o in out)
    assert [lock.get(5.0).version for lock in locks] == out


def test_a_member_with_a_lower_txn_limit_gets_smaller_transactions(etcd_factory: Callable[..., EtcdCluster], open_backend) -> None:
    cluster = etcd_factory(1, "--max-txn-ops", "16")
    backend: EtcdBackend = open_backend(cluster.url("/low"))
    locks = [backend.lock(f"job{i}") for i in range(40)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    out = backend.update_many([(lock, rec("me", 1), v) for lock, v in zip(locks, versions)], 10.0)
    assert all(isinstance(o, str) for o in out), out  # refused whole (nothing applied), then sent smaller
    assert [lock.get(5.0).version for lock in locks] == out
    assert backend._txn_renewals <= 14  # 16 operations: N nested + 2 of each


def test_a_member_with_a_lower_request_size_limit_gets_smaller_transactions(etcd_factory: Callable[..., EtcdCluster], open_backend) -> None:
    cluster = etcd_factory(1, "--max-request-bytes", "20000")
    backend: EtcdBackend = open_backend(cluster.url("/small"))
    big = rec("me", 0).evolve(holder="me-" + "x" * 2000)  # about 2.8 KB per nested transaction
    locks = [backend.lock(f"job{i}") for i in range(40)]
    versions = [lock.create(big, 5.0) for lock in locks]
    out = backend.update_many([(lock, big.evolve(renew_time=1.0), v) for lock, v in zip(locks, versions)], 10.0)
    assert all(isinstance(o, str) for o in out), out  # refused whole (nothing applied), then sent smaller
    assert [lock.get(5.0).version for lock in locks] == out
    assert backend._txn_bytes < 20000


def test_the_key_that_moved_on_is_that_items_conflict_and_the_others_land(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    locks = [backend.lock(f"job{i}") for i in range(5)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    stale1, stale3 = versions[1], versions[3]
    versions[1] = locks[1].update(rec("other", 1, token=2), stale1, 5.0)
    versions[3] = locks[3].update(rec("other", 1, token=2), stale3, 5.0)
    items = [(locks[i], rec("me", 5), v) for i, v in enumerate([versions[0], stale1, versions[2], stale3, versions[4]])]
    out = backend.update_many(items, 5.0)
    assert [type(o) for o in out] == [str, Conflict, str, Conflict, str]
    for i in (1, 3):
        got = locks[i].get(5.0)
        assert got is not None and got.record.holder == "other" and got.version == versions[i]
    for i in (0, 2, 4):
        got = locks[i].get(5.0)
        assert got is not None and got.version == out[i] and got.record.renew_time == 5.0


def test_garbage_is_that_items_outcome_not_the_batchs(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    locks = [backend.lock(f"job{i}") for i in range(5)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    etcd_server.put(f"{prefix}/lock/job1", b"\x00\xffnot a record")  # garbage in the lock key
    etcd_server.put(f"{prefix}/fence/job2", b"not a number")  # garbage in the fence key
    items = [(lock, rec("me", 1), v) for lock, v in zip(locks, versions)]
    items[3] = (locks[3], rec("me", 1), "garbage:version")  # not a version of this backend
    out = backend.update_many(items, 5.0)
    assert [type(o) for o in out] == [str, Conflict, Conflict, Conflict, str]
    assert etcd_server.get(f"{prefix}/lock/job1") == b"\x00\xffnot a record"
    assert etcd_server.get(f"{prefix}/fence/job2") == b"not a number"
    # the garbage read back is a placeholder whose version sends the next write alone (strict)
    assert locks[1].get(5.0).version.startswith("g")


def test_wrong_backend_items_are_refused_per_item(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    one: EtcdBackend = open_backend(etcd_server.url(prefix + "a"))
    two: EtcdBackend = open_backend(etcd_server.url(prefix + "b"))
    a, b = one.lock("job"), two.lock("job")
    va, vb = a.create(rec("me", 0), 5.0), b.create(rec("me", 0), 5.0)
    out = one.update_many([(b, rec("me", 1), vb), (a, rec("me", 1), va)], 5.0)
    assert isinstance(out[0], ConfigurationError) and isinstance(out[1], str)
    assert b.get(5.0).version == vb


def test_writes_that_are_not_plain_renewals_go_through_update(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    """A new term (raises the fence), a write over a read garbage key, and a second item for
    a key already in the transaction each go through the lock's own update."""
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    renew, new_term, garbage, twice = (backend.lock(n) for n in ("renew", "term", "garbage", "twice"))
    v_renew = renew.create(rec("me", 0), 5.0)
    v_term = new_term.create(rec("old", 0, token=3), 5.0)
    garbage.create(rec("old", 0, token=5), 5.0)
    etcd_server.put(f"{prefix}/lock/garbage", b"{not json")
    v_garbage = garbage.get(5.0).version  # strict: "g..."
    v_twice = twice.create(rec("me", 0), 5.0)
    alone: list[str] = []
    for lock in (renew, new_term, garbage, twice):
        inner = lock.update

        def spying(record, expected, timeout, inner=inner, name=lock.name):  # type: ignore[no-untyped-def]
            alone.append(name)
            return inner(record, expected, timeout)

        lock.update = spying  # type: ignore[method-assign]
    paths = counted(backend)
    out = backend.update_many(
        [
            (renew, rec("me", 1), v_renew),
            (new_term, rec("me", 1, token=4), v_term),
            (garbage, rec("me", 1, token=6), v_garbage),
            (twice, rec("me", 1), v_twice),
            (twice, rec("me", 2), v_twice),  # the same keys again: after the first, so a Conflict
        ],
        5.0,
    )
    assert [type(o) for o in out] == [str, str, str, str, Conflict]
    assert sorted(alone) == sorted(["term", "garbage", "twice"])
    assert paths == ["kv/txn"] * 4  # the batch, then one transaction per write that needs its own
    assert etcd_server.get(f"{prefix}/fence/term") == b"4" and etcd_server.get(f"{prefix}/fence/garbage") == b"6"
    assert twice.get(5.0).record.renew_time == 1.0


def test_a_paused_member_fails_the_batch_within_its_timeout(etcd_factory: Callable[..., EtcdCluster], open_backend) -> None:
    cluster = etcd_factory(1)
    backend: EtcdBackend = open_backend(cluster.url("/paused"))
    locks = [backend.lock(f"job{i}") for i in range(3)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    cluster.pause(0)
    try:
        started = time.monotonic()
        out = backend.update_many([(lk, rec("me", 1), v) for lk, v in zip(locks, versions)], 0.5)
        assert all(isinstance(o, BackendUnavailable) for o in out), out
        assert time.monotonic() - started < 10.0  # bounded by the timeout (0.5 s)
    finally:
        cluster.resume(0)
    assert cluster.wait_ready(30)
    # the write may or may not have landed (the member got the request): read, then renew
    current = [lk.get(5.0).version for lk in locks]
    out = backend.update_many([(lk, rec("me", 2), v) for lk, v in zip(locks, current)], 5.0)
    assert all(isinstance(o, str) for o in out), out


def test_errors_name_no_secret(etcd_factory: Callable[..., EtcdCluster], open_backend) -> None:
    cluster = etcd_factory(1)
    secret = "s3cr3t-Pa55"
    backend: EtcdBackend = open_backend(cluster.url("/secret", userinfo=f"root:{secret}"))
    lock = backend.lock("job")
    cluster.pause(0)
    try:
        out = backend.update_many([(lock, rec("me", 1), "5:5:1")], 0.5)
    finally:
        cluster.resume(0)
    assert isinstance(out[0], BackendUnavailable) and secret not in str(out[0])


def test_asyncio_elections_on_etcd_renew_in_batches(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend: EtcdBackend = open_backend(etcd_server.url(prefix))
    assert_renewed_in_batches(backend, [f"job{i}" for i in range(30)])
