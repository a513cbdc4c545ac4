"""The Django ORM helper on SQLite, PostgreSQL and MariaDB.

A model with :class:`~celery_leader.fencing.django.FencedModel`; its table is created in
a throwaway database per server (own aliases, so that tests/django's databases are left
alone). The term-ended proof: leader A (token t) steps down, B leads (t' > t) and writes,
then A's late write with t is refused and B's row stays.
"""

from __future__ import annotations

import contextlib
import threading
import uuid

import pytest

import tests.django.conftest as django_setup  # configures Django with the tests' settings

assert django_setup.DB_NAME  # Django is set up before the models below are defined

from django.db import connections, models, transaction  # noqa: E402

from celery_leader import Election  # noqa: E402
from celery_leader.errors import InvalidTokenError, StaleTokenError  # noqa: E402
from celery_leader.fencing.django import FencedModel, fenced_write  # noqa: E402
from tests.servers import port_open, unavailable  # noqa: E402


class FencedReport(FencedModel):
    name = models.CharField(max_length=64, unique=True)
    body = models.TextField(default="")

    class Meta:
        app_label = "testapp"
        db_table = "fencing_" + uuid.uuid4().hex[:8]


class FencedSlug(FencedModel):
    """Two unique columns: the key is one of them, the values may collide on the other."""

    name = models.CharField(max_length=64, unique=True)
    slug = models.CharField(max_length=64, unique=True)
    body = models.TextField(default="")

    class Meta:
        app_label = "testapp"
        db_table = "fencing_slug_" + uuid.uuid4().hex[:8]


DB = "fencing_" + uuid.uuid4().hex[:8]


def _alias(base: str, name: str) -> str:
    alias = f"fencing_{base}"
    if alias not in connections.databases:
        connections.databases[alias] = {**connections.databases[base], "NAME": name}
    return alias


@pytest.fixture(scope="module", params=["sqlite", "pg", "maria"])
def db(request, tmp_path_factory):
    kind = request.param
    if kind == "sqlite":
        alias = _alias("default", str(tmp_path_factory.mktemp("fencing") / "db.sqlite3"))
        drop = None
    elif kind == "pg":
        if not port_open(5432):
            unavailable("PostgreSQL on 127.0.0.1:5432 not reachable")
        import psycopg

        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{DB}"')
        alias = _alias("pg", DB)
        drop = lambda: admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')  # noqa: E731
    else:
        if not port_open(3306):
            unavailable("MariaDB on 127.0.0.1:3306 not reachable")
        import pymysql

        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
        admin.cursor().execute(f"CREATE DATABASE `{DB}` CHARACTER SET utf8mb4")
        alias = _alias("maria", DB)
        drop = lambda: admin.cursor().execute(f"DROP DATABASE IF EXISTS `{DB}`")  # noqa: E731
    with connections[alias].schema_editor() as editor:
        editor.create_model(FencedReport)
        editor.create_model(FencedSlug)
    try:
        yield alias
    finally:
        connections[alias].close()
        if drop is not None:
            drop()
            admin.close()


@pytest.fixture
def name() -> str:
    return uuid.uuid4().hex[:12]


def body(db: str, name: str) -> str:
    return FencedReport.objects.using(db).get(name=name).body


def test_lower_token_refused_equal_and_higher_written(db, name):
    objects = FencedReport.objects.using(db)
    objects.fenced_write(3, {"body": "a"}, name=name)
    objects.fenced_write(3, {"body": "b"}, name=name)
    objects.fenced_write(8, {"body": "c"}, name=name)
    with pytest.raises(StaleTokenError) as info:
        objects.fenced_write(7, {"body": "stale"}, name=name)
    assert (info.value.token, info.value.seen) == (7, 8)
    row = objects.get(name=name)
    assert (row.body, row.fence_token) == ("c", 8)
    for bad in (None, "8", -1, 8.0):
        with pytest.raises(InvalidTokenError):
            objects.fenced_write(bad, {"body": "bad"}, name=name)
    with pytest.raises(ValueError, match="fence_token"):
        fenced_write(FencedReport.objects.using(db), 9, {"fence_token": 1}, name=name)
    assert body(db, name) == "c"


def test_a_row_written_before_fencing_accepts_any_token(db, name):
    FencedReport.objects.using(db).create(name=name, body="old")
    fenced_write(FencedReport, 0, {"body": "fenced"}, using=db, name=name)
    assert body(db, name) == "fenced"


def test_the_ended_term_is_refused(db, name):
    url = "memory://fencing-" + name
    a = Election("report", url=url, identity="a", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    b = Election("report", url=url, identity="b", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    try:
        a.start()
        assert a.wait_until_leader(10)
        term_a = a.leadership
        FencedReport.objects.using(db).fenced_write(term_a, {"body": "a"}, name=name)
        b.start()
        a.stop()  # A's term ends (its work, frozen, does not know yet)
        assert b.wait_until_leader(10)
        assert b.token > term_a.token
        FencedReport.objects.using(db).fenced_write(b.leadership, {"body": "b"}, name=name)
        with pytest.raises(StaleTokenError):
            FencedReport.objects.using(db).fenced_write(term_a, {"body": "a late"}, name=name)
        assert body(db, name) == "b"
    finally:
        a.stop()
        b.stop()


def test_fields_not_written_get_their_defaults(db, name):
    FencedReport.objects.using(db).fenced_write(2, name=name)
    row = FencedReport.objects.using(db).get(name=name)
    assert (row.body, row.fence_token) == ("", 2)


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "in-transaction"])
def test_racing_writers_leave_the_higher_token(db, atomic):
    """Released together by a barrier, four rounds; also each inside a transaction."""
    for _ in range(4):
        name = uuid.uuid4().hex[:12]
        barrier = threading.Barrier(2)
        outcome: dict[int, object] = {}

        def write(token: int, name=name, barrier=barrier, outcome=outcome) -> None:
            barrier.wait(10)
            try:
                with transaction.atomic(using=db) if atomic else contextlib.nullcontext():
                    FencedReport.objects.using(db).fenced_write(token, {"body": str(token)}, name=name)
                outcome[token] = "written"
            except StaleTokenError as exc:
                outcome[token] = exc
            finally:
                connections[db].close()

        threads = [threading.Thread(target=write, args=(token,)) for token in (5, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert outcome[6] == "written", outcome
        assert body(db, name) == "6"


def test_the_primary_key_as_pk_or_id_and_a_lookup(db, name):
    """``pk=`` is how Django code names a row most often: the same decision as ``id=``."""
    objects = FencedReport.objects.using(db)
    row = objects.create(name=name, body="old")
    objects.fenced_write(4, {"body": "by pk"}, pk=row.pk)
    assert body(db, name) == "by pk"
    objects.fenced_write(5, {"body": "by id"}, id=row.pk)
    with pytest.raises(StaleTokenError):
        objects.fenced_write(4, {"body": "stale"}, pk=row.pk)
    assert body(db, name) == "by id"
    with pytest.raises(ValueError, match="name__iexact"):  # a lookup cannot name a unique key
        objects.fenced_write(6, {"body": "lookup"}, name__iexact=name.upper())
    assert body(db, name) == "by id"


def test_a_value_colliding_on_another_unique_column_never_writes_that_row(db, name):
    """MariaDB's ON DUPLICATE KEY UPDATE fires on *any* unique key: the write for row
    ``name`` must fail like create() would, not overwrite the row that owns the slug."""
    from django.db import IntegrityError

    objects = FencedSlug.objects.using(db)
    objects.fenced_write(5, {"slug": f"s-{name}", "body": "the other row"}, name=f"other-{name}")
    with pytest.raises(IntegrityError):
        with transaction.atomic(using=db):
            objects.fenced_write(9, {"slug": f"s-{name}", "body": "mine"}, name=name)
    other = objects.get(name=f"other-{name}")
    assert (other.body, other.fence_token) == ("the other row", 5)
    assert not objects.filter(name=name).exists()
    objects.fenced_write(9, {"slug": f"t-{name}", "body": "mine"}, name=name)  # no collision: written
    assert objects.get(name=name).body == "mine"
