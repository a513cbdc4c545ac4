"""What each store's helper does at its edges: forced interleavings, exact comparisons,
garbled fences, rows and objects from before fencing, misuse that must name the fix.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from celery_leader.errors import StaleTokenError
from tests.fencing.stores import open_store

# -- SQL: the writer that waits on the row lock decides on the committed row ---------------


def _wait_until_blocked(store, thread: threading.Thread) -> None:
    """PostgreSQL: until a session waits on a lock; elsewhere a pause (the test holds either way)."""
    if store.kind != "postgresql":
        thread.join(0.5)
        return
    import sqlalchemy as sa

    deadline = time.monotonic() + 20
    with store.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(sa.text(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
            )).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the second writer never waited on the row lock")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
@pytest.mark.parametrize("holder", [6, 5])
def test_sql_writer_blocked_on_the_row_lock_decides_on_the_committed_row(make_spec, kind, holder):
    """One writer has written (uncommitted) and holds the row; the other starts and blocks.

    Whichever commits first, token 6's value is what stays, and token 5 is refused when
    it comes second.
    """
    from celery_leader.fencing.sql import fenced_write

    spec = make_spec(kind)
    first, second = open_store(spec), open_store(spec)
    try:
        first.write(1, "seed")
        other = 5 if holder == 6 else 6
        outcome: dict[str, object] = {}

        def blocked() -> None:
            try:
                second.write(other, f"token-{other}")
                outcome["second"] = "written"
            except StaleTokenError as exc:
                outcome["second"] = exc

        with first.engine.connect() as conn:
            if kind == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.begin()
            fenced_write(conn, first.table, {"name": "k"}, {"body": f"token-{holder}"}, holder)
            thread = threading.Thread(target=blocked)
            thread.start()
            _wait_until_blocked(first, thread)
            conn.commit()
        thread.join(60)
        assert first.read() == "token-6"
        if other == 5:
            assert isinstance(outcome["second"], StaleTokenError) and outcome["second"].seen == 6
        else:
            assert outcome["second"] == "written"
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sql_generic_path_for_other_databases(make_spec, monkeypatch, kind):
    """The UPDATE-then-INSERT path (databases without a known upsert), forced on two that have one."""
    from celery_leader.fencing import sql

    monkeypatch.setattr(sql, "ONE_STATEMENT", frozenset())
    spec = make_spec(kind)
    store = open_store(spec)
    try:
        store.write(3, "a")
        store.write(3, "b")
        store.write(5, "c")
        with pytest.raises(StaleTokenError) as info:
            store.write(4, "stale")
        assert (info.value.seen, store.read()) == (5, "c")
        for i in range(4):  # racing to create the row: the loser of the INSERT goes back to the UPDATE
            writers = {t: open_store({**spec, "row": f"r{i}"}) for t in (5, 6)}
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def write(token: int, writers=writers, barrier=barrier, errors=errors) -> None:
                barrier.wait(10)
                try:
                    writers[token].write(token, str(token))
                except StaleTokenError:
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(t,)) for t in (5, 6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors and writers[6].read() == "6", errors
            for w in writers.values():
                w.close()
    finally:
        store.close()


def test_sql_row_from_before_fencing_and_misuse(make_spec):
    import sqlalchemy as sa

    from celery_leader.fencing.sql import fenced_write, stored_token

    store = open_store(make_spec("postgresql"))
    try:
        with store.engine.begin() as conn:
            conn.execute(store.table.insert().values(name="k", body="old"))  # no token
            assert stored_token(conn, store.table, {"name": "k"}) is None
            fenced_write(conn, store.table, {"name": "k"}, {"body": "new"}, 0)
            assert stored_token(conn, store.table, {"name": "k"}) == 0
            with pytest.raises(ValueError, match="no column 'nope'"):
                fenced_write(conn, store.table, {"name": "k"}, {"nope": 1}, 1)
            with pytest.raises(ValueError, match="cannot be in values"):
                fenced_write(conn, store.table, {"name": "k"}, {"fence_token": 1}, 1)
            with pytest.raises(ValueError, match="key columns"):
                fenced_write(conn, store.table, {}, {"body": "x"}, 1)
            bare = sa.Table(store.table.name, sa.MetaData(), sa.Column("name", sa.String(64), primary_key=True),
                            sa.Column("body", sa.Text))
            with pytest.raises(ValueError, match=r"fence_column\('fence_token'\)"):
                fenced_write(conn, bare, {"name": "k"}, {"body": "x"}, 1)
    finally:
        store.close()


# -- Redis -------------------------------------------------------------------------------


def test_redis_compares_tokens_exactly_above_float_precision(make_spec):
    """2**53 + 1 and 2**53 are the same double: a float comparison would accept the lower."""
    store = open_store(make_spec("redis-set"))
    try:
        store.write(2**53 + 1, "high")
        with pytest.raises(StaleTokenError) as info:
            store.write(2**53, "low")
        assert info.value.seen == 2**53 + 1
        store.write(2**63 - 1, "max")
        assert store.read() == "max"
    finally:
        store.close()


def test_redis_garbled_fence_refuses_and_says_how_to_repair(make_spec):
    store = open_store(make_spec("redis-hset"))
    try:
        store.write(2, "ok")
        store.client.set(store.key + ":fence", "2.5e3")
        with pytest.raises(StaleTokenError, match=r"not a token; repair it by hand .* never by deleting it"):
            store.write(9, "x")
        assert store.read() == "ok"
    finally:
        store.close()


def test_redis_counter_log_ttl_and_own_fence_key(make_spec):
    import redis

    from celery_leader.fencing import redis as fr

    spec = make_spec("redis-set")
    key = spec["key"]
    client = redis.Redis.from_url(spec["url"])
    fence = "{" + key + "}:own-fence"
    try:
        assert fr.fenced_incrby(client, key + ":n", 3, 2) == 2
        assert fr.fenced_incrby(client, key + ":n", 4) == 3
        with pytest.raises(StaleTokenError):
            fr.fenced_incrby(client, key + ":n", 3)
        assert fr.fenced_rpush(client, key + ":log", 1, "a", "b") == 2
        fr.fenced_set(client, key, 5, "v", px=60000, fence_key=fence)
        assert 0 < client.pttl(key) <= 60000 and client.ttl(fence) == -1  # the fence never expires
        assert fr.highest_token(client, key, fence_key=fence) == 5 and client.get(key + ":fence") is None
        fr.observe(client, key, 6, fence_key=fence)
        with pytest.raises(StaleTokenError):
            fr.fenced_set(client, key, 5, "late", fence_key=fence)
        with pytest.raises(ValueError, match="at least one"):
            fr.fenced_hset(client, key + ":h", 1, {})
    finally:
        client.delete(key + ":n", key + ":n:fence", key + ":log", key + ":log:fence", fence)
        client.close()


def test_redis_fenced_log_for_a_harness(make_spec):
    import redis

    from celery_leader.fencing import redis as fr

    key = make_spec("redis-set")["key"]
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        fr.fenced_log_append(client, key, 1, node="a", n=1)
        fr.fenced_log_append(client, key, 2, node="b", n=1)
        with pytest.raises(StaleTokenError):
            fr.fenced_log_append(client, key, 1, node="a", n=2)  # the paused leader, resumed
        fr.fenced_log_append(client, key, 2, node="b", n=2)
        assert fr.read_fenced_log(client, key) == [
            (1, {"node": "a", "n": "1"}), (2, {"node": "b", "n": "1"}), (2, {"node": "b", "n": "2"})]
    finally:
        client.close()


# -- S3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["s3", "s3-seaweedfs"])
def test_s3_identical_bytes_from_a_newer_term_still_stop_the_stale_writer(make_spec, server):
    """The ABA case: the newer term writes the very bytes already stored (same MD5).

    The stale writer read the head (ETag E, token 5) just before; the newer term's write
    lands between its head and its put. Were the ETag still E, the stale If-Match would
    pass; the fenced put gives the identical bytes a new ETag, so it fails, and the
    stale writer, reading again, sees token 6 and stops.
    """
    from celery_leader.fencing.s3 import fenced_put, stored_token

    spec = make_spec(server)
    stale, newer = open_store(spec), open_store(spec)
    bucket, key = spec["bucket"], spec["key"]
    etag = fenced_put(stale.client, bucket, key, b"same bytes", 5)
    real_put = stale.client.put_object
    calls: list[str] = []

    def slowed_put(**kwargs):
        if not calls:  # the newer term writes while the stale one is between head and put
            calls.append(fenced_put(newer.client, bucket, key, b"same bytes", 6))
        return real_put(**kwargs)

    stale.client.put_object = slowed_put
    with pytest.raises(StaleTokenError) as info:
        fenced_put(stale.client, bucket, key, b"stale bytes", 5)
    assert info.value.seen == 6 and calls[0] != etag
    assert newer.read() == "same bytes" and stored_token(newer.client, bucket, key) == 6


def test_s3_higher_write_racing_the_multipart_completion_wins(make_spec):
    """SeaweedFS, which honours If-Match on CompleteMultipartUpload (moto 5.2 does not).

    Token 6 rewrites identical bytes (the multipart path); while its upload is open, token
    7 writes. The completion's If-Match fails, token 6 reads again, sees 7 and stops.
    """
    from celery_leader.fencing.s3 import fenced_put, stored_token

    spec = make_spec("s3-seaweedfs")
    six, seven = open_store(spec), open_store(spec)
    bucket, key = spec["bucket"], spec["key"]
    fenced_put(six.client, bucket, key, b"same bytes", 5)
    real_upload = six.client.upload_part
    calls: list[str] = []

    def slowed_upload(**kwargs):
        if not calls:
            calls.append(fenced_put(seven.client, bucket, key, b"seven", 7))
        return real_upload(**kwargs)

    six.client.upload_part = slowed_upload
    with pytest.raises(StaleTokenError) as info:
        fenced_put(six.client, bucket, key, b"same bytes", 6)
    assert info.value.seen == 7 and calls
    assert seven.read() == "seven" and stored_token(seven.client, bucket, key) == 7
    # no multipart upload left behind by the refused write
    assert not six.client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads")


def test_s3_object_from_before_fencing_and_garbled_metadata(make_spec):
    from celery_leader.fencing.s3 import fenced_put, stored_token

    spec = make_spec("s3")
    store = open_store(spec)
    bucket, key = spec["bucket"], spec["key"]
    store.client.put_object(Bucket=bucket, Key=key, Body=b"old")
    assert stored_token(store.client, bucket, key) is None
    fenced_put(store.client, bucket, key, "new", 0, metadata={"kind": "report"}, ContentType="text/plain")
    head = store.client.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"kind": "report", "fence-token": "0"} and head["ContentType"] == "text/plain"
    store.client.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata={"fence-token": "soon"})
    with pytest.raises(StaleTokenError, match="not a token"):
        fenced_put(store.client, bucket, key, b"y", 99)
    assert store.read() == "x"


# -- the package ---------------------------------------------------------------------------


def test_importing_the_package_imports_no_framework():
    code = ("import sys, celery_leader.fencing, celery_leader.fencing.redis, celery_leader.fencing.sql, "
            "celery_leader.fencing.s3; print(sorted(m for m in ('redis', 'sqlalchemy', 'django', 'boto3', 'celery', "
            "'rq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_sql_value_colliding_on_another_unique_column_never_writes_that_row(make_spec, kind):
    """MariaDB's ON DUPLICATE KEY UPDATE fires on any unique key: a write for row ``k`` whose
    slug belongs to row ``other`` must fail (as an INSERT would), not overwrite ``other``."""
    import sqlalchemy as sa

    from celery_leader.fencing.sql import fenced_write

    spec = make_spec(kind)
    engine = sa.create_engine(spec["url"], poolclass=sa.pool.NullPool)
    meta = sa.MetaData()
    table = sa.Table(spec["table"] + "_slug", meta, sa.Column("name", sa.String(64), primary_key=True),
                     sa.Column("slug", sa.String(64), unique=True), sa.Column("body", sa.Text),
                     sa.Column("fence_token", sa.BigInteger, nullable=True))  # fmt: skip
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            fenced_write(conn, table, {"name": "other"}, {"slug": "s", "body": "the other row"}, 5)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            fenced_write(conn, table, {"name": "k"}, {"slug": "s", "body": "mine"}, 9)
        with engine.begin() as conn:
            rows = conn.execute(sa.select(table.c.name, table.c.body, table.c.fence_token)).all()
            assert [tuple(r) for r in rows] == [("other", "the other row", 5)]
            fenced_write(conn, table, {"name": "k"}, {"slug": "t", "body": "mine"}, 9)  # no collision
            fenced_write(conn, table, {"name": "k"}, {"slug": "t", "body": "again"}, 9)
            assert conn.execute(sa.select(table.c.body).where(table.c.name == "k")).scalar() == "again"
    finally:
        meta.drop_all(engine)
        engine.dispose()
