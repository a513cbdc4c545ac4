"""Batched renewals on a real PostgreSQL (issue 21): ``PostgresBackend.update_many`` sends
every plain renewal of a batch in one statement, each row still compared with its own
version; anything else goes through the lock's own ``update``, so fencing and NOTIFY stay
as they are."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

from celery_leader.backends.postgresql import DEFAULT_TABLE, PostgresBackend, PostgresLock
from celery_leader.backends.sql import channel_for
from celery_leader.errors import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.lock import RenewBatch
from celery_leader.record import LeaderRecord
from tests.batches import assert_renewed_in_batches


def rec(holder: str, n: int, token: int = 1) -> LeaderRecord:
    return LeaderRecord(holder=holder, lease_duration=15, transitions=token, renew_time=float(n))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def counted(backend: PostgresBackend) -> list[int]:
    """Count the backend's calls (each one statement on one connection: one round trip)."""
    calls: list[int] = []
    inner = backend._call

    def counting(timeout, fn):  # type: ignore[no-untyped-def]
        calls.append(1)
        return inner(timeout, fn)

    backend._call = counting  # type: ignore[method-assign]
    return calls


def test_capability_and_batch_object(pg_url, open_backend) -> None:
    backend: PostgresBackend = open_backend(pg_url)
    lock = backend.lock(unique("cap"))
    assert PostgresLock.capabilities.batch and backend.capabilities.batch
    assert lock.renew_batch() is backend and isinstance(backend, RenewBatch)


def test_renewals_land_in_one_statement_and_return_the_versions_in_order(pg_url, open_backend) -> None:
    backend: PostgresBackend = open_backend(pg_url)
    locks = [backend.lock(unique("job")) for _ in range(50)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    calls = counted(backend)
    items = [(lock, rec("me", 1), v) for lock, v in zip(locks, versions)]
    out = backend.update_many(items[::-1], 5.0)  # any order: the answers follow the items
    assert len(calls) == 1, "one statement for every renewal"
    assert out == [str(int(v) + 1) for v in versions[::-1]]  # the version arithmetic of update()
    for lock, version in zip(locks, out[::-1]):
        got = lock.get(5.0)
        assert got is not None and got.version == version and got.record.renew_time == 1.0
    # a version returned by the batch is usable for the next compare-and-swap, one by one and batched
    assert locks[0].update(rec("me", 2), out[-1], 5.0) == str(int(out[-1]) + 1)
    again = backend.update_many([(lock, rec("me", 3), lock.get(5.0).version) for lock in locks], 5.0)
    assert all(isinstance(o, str) for o in again)


def test_the_row_that_moved_on_is_that_items_conflict_and_the_others_land(pg_url, open_backend) -> None:
    backend: PostgresBackend = open_backend(pg_url)
    other: PostgresBackend = open_backend(pg_url)
    locks = [backend.lock(unique("job")) for _ in range(5)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    stale1, stale3 = versions[1], versions[3]
    # another candidate takes over 1 and 3 (a new term: its own lock objects)
    versions[1] = other.lock(locks[1].name).update(rec("other", 1, token=2), stale1, 5.0)
    versions[3] = other.lock(locks[3].name).update(rec("other", 1, token=2), stale3, 5.0)
    items = [(locks[i], rec("me", 5), v) for i, v in enumerate([versions[0], stale1, versions[2], stale3, versions[4]])]
    out = backend.update_many(items, 5.0)
    assert [type(o) for o in out] == [str, Conflict, str, Conflict, str]
    assert stale1 in str(out[1]) and locks[1].name in str(out[1])
    for i in (1, 3):  # the stale items did not write: the other writer's record and version stay
        got = locks[i].get(5.0)
        assert got is not None and got.record.holder == "other" and got.version == versions[i]
    for i in (0, 2, 4):
        got = locks[i].get(5.0)
        assert got is not None and got.version == out[i] and got.record.renew_time == 5.0


def test_garbage_is_that_items_outcome_not_the_batchs(pg_url, db, open_backend) -> None:
    backend: PostgresBackend = open_backend(pg_url)
    locks = [backend.lock(unique("garbage")) for _ in range(4)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    # row 1: garbage written by hand (the version moves, as every write's does)
    db.execute(f"UPDATE {DEFAULT_TABLE} SET record = %s, version = version + 1 WHERE name = %s", ['{"holderIdentity": [', locks[1].name])
    # item 2: a version that is not one of this backend's
    items = [
        (locks[0], rec("me", 1), versions[0]),
        (locks[1], rec("me", 1), versions[1]),
        (locks[2], rec("me", 1), "not-a-version"),
        (locks[3], rec("me", 1), versions[3]),
    ]
    out = backend.update_many(items, 5.0)
    assert isinstance(out[0], str) and isinstance(out[3], str)
    assert isinstance(out[1], Conflict) and isinstance(out[2], Conflict)
    assert locks[1].get(5.0).record.decode_error  # left as it was
    assert locks[2].get(5.0).version == versions[2]


def test_wrong_backend_items_are_refused_per_item(pg_url, open_backend) -> None:
    one: PostgresBackend = open_backend(pg_url)
    two: PostgresBackend = open_backend(pg_url)
    a, b = one.lock(unique("a")), two.lock(unique("b"))
    va, vb = a.create(rec("me", 0), 5.0), b.create(rec("me", 0), 5.0)

    class Foreign:  # not a lock of this backend at all
        name = "foreign"

        def describe(self) -> str:
            return "foreign lock"

    out = one.update_many([(b, rec("me", 1), vb), (Foreign(), rec("me", 1), "1"), (a, rec("me", 1), va)], 5.0)  # type: ignore[list-item]
    assert isinstance(out[0], ConfigurationError) and isinstance(out[1], ConfigurationError) and isinstance(out[2], str)
    assert b.get(5.0).version == vb


def test_writes_that_are_not_plain_renewals_go_through_update(pg_url, db, open_backend) -> None:
    """A new term (raises the fence), a release (notifies), an absent row, and a second item
    for a row already in the statement each go through the lock's own update."""
    backend: PostgresBackend = open_backend(pg_url)
    renew, new_term, release, absent, twice = (backend.lock(unique(p)) for p in ("renew", "term", "release", "absent", "twice"))
    v_renew = renew.create(rec("me", 0), 5.0)
    v_term = backend.lock(new_term.name).create(rec("old", 0, token=3), 5.0)  # another lock object's term
    v_release = release.create(rec("me", 0, token=4), 5.0)
    v_twice = twice.create(rec("me", 0), 5.0)
    absent_version = "absent:7"  # a fence without a row (a hand-deleted row), read before
    db.execute(f"INSERT INTO {DEFAULT_TABLE}_fence (name, token) VALUES (%s, 7)", [absent.name])
    alone: list[str] = []
    for lock in (renew, new_term, release, absent, twice):
        inner = lock.update

        def spying(record, expected, timeout, inner=inner, name=lock.name):  # type: ignore[no-untyped-def]
            alone.append(name)
            return inner(record, expected, timeout)

        lock.update = spying  # type: ignore[method-assign]
    listener = db
    listener.execute(f'LISTEN "{channel_for(DEFAULT_TABLE)}"')
    calls = counted(backend)
    out = backend.update_many(
        [
            (renew, rec("me", 1), v_renew),
            (new_term, rec("me", 1, token=4), v_term),
            (release, rec("", 1, token=4), v_release),
            (absent, rec("me", 1, token=8), absent_version),
            (twice, rec("me", 1), v_twice),
            (twice, rec("me", 2), v_twice),  # the same row again: after the first, so a Conflict
        ],
        5.0,
    )
    assert [type(o) for o in out] == [str, str, str, str, str, Conflict]
    assert sorted(alone) == sorted([new_term.name, release.name, absent.name, twice.name])
    assert len(calls) == 1 + 4  # the statement, then one call per write that needs its own
    fence = dict(db.execute(f"SELECT name, token FROM {DEFAULT_TABLE}_fence WHERE name = ANY(%s)", [[new_term.name, absent.name]]).fetchall())
    assert fence == {new_term.name: 4, absent.name: 8}  # the new terms raised the fence
    assert release.get(5.0).record.holder == "" and twice.get(5.0).record.renew_time == 1.0
    # the release and the new terms notified (holder changes); the renewals did not
    payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=3)]
    named = {p.split(" ", 1)[1] for p in payloads}
    assert named == {new_term.name, release.name, absent.name}


def test_two_batches_over_the_same_rows_in_opposite_orders_queue_instead_of_deadlocking(pg_url, pg_database, open_backend) -> None:
    """A stale leader's late batch beside the new leader's: the rows are locked in name order
    whatever the items' order, so the second batch waits for the first (no deadlock error
    after deadlock_timeout) and then finds every row moved on: its own Conflicts."""
    import threading

    from .conftest import admin_connect

    # plans that visit the rows in the items' order (index nested loops), as on a big table:
    # without its own locking order each batch would lock the rows in its items' order
    forced = pg_url + "?options=" + quote("-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off")
    first: PostgresBackend = open_backend(forced)
    second: PostgresBackend = open_backend(forced)
    names = sorted(unique(f"order{i}") for i in range(3))
    locks = [first.lock(n) for n in names]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    others = [second.lock(n) for n in names]
    for lock in others:  # the same term through the second backend's lock objects (for the test only)
        lock._written, lock._written_holder = 1, "me"
    holder = admin_connect(pg_database)  # holds the middle row so both batches must wait
    holder.execute("BEGIN")
    holder.execute(f"SELECT 1 FROM {DEFAULT_TABLE} WHERE name = %s FOR UPDATE", [names[1]])
    outcomes: dict[str, list[object]] = {}

    def run(label: str, backend: PostgresBackend, items: list) -> None:  # type: ignore[type-arg]
        outcomes[label] = backend.update_many(items, 20.0)

    watcher = admin_connect(pg_database)  # not the holder: a transaction sees one snapshot of the statistics

    def waiting() -> int:
        rows = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(rows[0])

    one = threading.Thread(target=run, args=("first", first, [(lk, rec("me", 1), v) for lk, v in zip(locks, versions)]))
    one.start()
    deadline = time.monotonic() + 20
    while waiting() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    reverse = [(lk, rec("me", 2), v) for lk, v in zip(others, versions)][::-1]
    two = threading.Thread(target=run, args=("second", second, reverse))
    two.start()
    while waiting() < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert waiting() == 2, "both batches wait for a row lock"
    holder.execute("COMMIT")
    one.join(30)
    two.join(30)
    holder.close()
    watcher.close()
    assert all(isinstance(o, str) for o in outcomes["first"]), outcomes
    assert all(isinstance(o, Conflict) for o in outcomes["second"]), outcomes
    # each its own row's Conflict, not a deadlock's ("lost a race") for the whole statement
    assert all("the stored version is no longer" in str(o) for o in outcomes["second"]), outcomes
    assert [lock.get(5.0).version for lock in locks] == outcomes["first"]


def test_a_hung_server_fails_the_batch_within_its_timeout(proxy, pg_database, open_backend) -> None:
    backend: PostgresBackend = open_backend(f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    locks = [backend.lock(unique("hung")) for _ in range(3)]
    versions = [lock.create(rec("me", 0), 5.0) for lock in locks]
    proxy.set_mode("blackhole")
    try:
        started = time.monotonic()
        out = backend.update_many([(lk, rec("me", 1), v) for lk, v in zip(locks, versions)], 0.5)
        assert all(isinstance(o, BackendUnavailable) for o in out), out
        assert time.monotonic() - started < 10.0  # bounded by the timeout (0.5 s), not by TCP's
    finally:
        proxy.set_mode("pass")
    deadline = time.monotonic() + 20
    while True:  # the server comes back: the same versions still renew (nothing landed)
        out = backend.update_many([(lk, rec("me", 2), v) for lk, v in zip(locks, versions)], 2.0)
        if all(isinstance(o, str) for o in out) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(isinstance(o, str) for o in out), out


def test_errors_name_no_secret(proxy, pg_database, open_backend) -> None:
    secret = "s3cr3t-Pa55"
    backend: PostgresBackend = open_backend(f"postgresql://postgres:{secret}@127.0.0.1:{proxy.port}/{pg_database}")
    lock = backend.lock(unique("secret"))
    proxy.set_mode("blackhole")
    try:
        out = backend.update_many([(lock, rec("me", 1), "1")], 0.5)
    finally:
        proxy.set_mode("pass")
    assert isinstance(out[0], BackendUnavailable) and secret not in str(out[0])


def test_asyncio_elections_on_postgresql_renew_in_batches(pg_url, open_backend) -> None:
    backend: PostgresBackend = open_backend(pg_url)
    prefix = unique("aio")
    assert_renewed_in_batches(backend, [f"{prefix}-{i}" for i in range(30)])
