"""Fixtures for the postgresql:// tests: a throwaway database on the PostgreSQL at
127.0.0.1:5432 (trust auth, user postgres) for the session, dropped afterwards; roles made
for permission tests are dropped too."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.servers import unavailable

psycopg = pytest.importorskip("psycopg", reason="the postgresql:// backend needs psycopg 3: pip install 'celery-leader[postgresql]'")

from celery_leader.backends.postgresql import PostgresBackend  # noqa: E402

SUFFIX = uuid.uuid4().hex[:10]
DB_NAME = f"celery_leader_pg_{SUFFIX}"


def admin_connect(dbname: str = "postgres"):
    return psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The name of a database created for this session (and dropped after it)."""
    try:
        admin = admin_connect()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    try:
        yield DB_NAME
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        for (role,) in admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"cl_{SUFFIX}_%"]).fetchall():
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


@pytest.fixture(scope="session")
def pg_url(pg_database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{pg_database}"


@pytest.fixture
def db(pg_database: str) -> Iterator["psycopg.Connection"]:
    """An admin connection to the session's database (autocommit)."""
    conn = admin_connect(pg_database)
    yield conn
    conn.close()


@pytest.fixture
def open_backend() -> Iterator[Callable[[str], PostgresBackend]]:
    """``open_backend(url)``: a backend closed at teardown."""
    opened: list[PostgresBackend] = []

    def make(url: str) -> PostgresBackend:
        backend = PostgresBackend.from_url(url)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def proxy(pg_database):
    """A TCP proxy to 127.0.0.1:5432 that a test can black-hole (benchmarks/tcpproxy.py)."""
    from benchmarks.tcpproxy import TcpProxy

    p = TcpProxy(5432)
    yield p
    p.close()


@pytest.fixture
def make_role(db) -> Callable[..., str]:
    """``make_role()``: a LOGIN role without privileges on the session's database; dropped at the end."""
    made: list[str] = []

    def make() -> str:
        role = f"cl_{SUFFIX}_{uuid.uuid4().hex[:6]}"
        db.execute(f'CREATE ROLE "{role}" LOGIN')
        made.append(role)
        return role

    yield make
    for role in made:
        with contextlib.suppress(psycopg.Error):
            db.execute(f'DROP OWNED BY "{role}"')
