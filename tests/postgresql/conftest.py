"""Fixtures for the postgresql:// tests: a throwaway database on the PostgreSQL at
127.0.0.1:5432 (trust auth, user postgres) for the session, dropped afterwards; roles made
for permission tests are dropped too."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.servers import closed_afterwards, unavailable

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
    yield from closed_afterwards(PostgresBackend.from_url)


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


#: the superuser password of the private server (characters that need percent-encoding in a URL)
PRIVATE_PASSWORD = "Sekr3t/p@ss w0rd%"


@pytest.fixture(scope="module")
def password_server() -> Iterator[int]:
    """A private PostgreSQL on a free port that demands a password (scram-sha-256) over TCP.

    The shared server trusts every local connection, so only this one can show that a
    password from the URL, ``PGPASSWORD`` or a passfile really reaches the server.
    """
    import glob
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    from tests.servers import free_port, running

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    bindir = os.path.dirname(found[-1])
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no 'postgres' user to run a private PostgreSQL server as")
    if os.geteuid() != 0:
        unavailable("a private PostgreSQL server is started as the 'postgres' user, which needs root")
    # not under pytest's tmp_path: its parents are private to root, and the server runs as postgres
    base = Path(tempfile.mkdtemp(prefix="celery-leader-pgpw-"))
    os.chown(base, owner.pw_uid, owner.pw_gid)
    pwfile = base / "pw"
    pwfile.write_text(PRIVATE_PASSWORD + "\n")
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    done = subprocess.run(
        [f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile), "--auth-host=scram-sha-256",
         "--auth-local=trust"],
        user=owner.pw_uid, group=owner.pw_gid, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
    port = free_port()
    argv = [f"{bindir}/postgres", "-D", str(data), "-p", str(port), "-k", str(base),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "logging_collector=off"]  # fmt: skip
    try:
        with running(argv, port, user=owner.pw_uid, group=owner.pw_gid, timeout=30):
            # the port opens before the server accepts logins ("the database system is
            # starting up"): wait until pg_isready says it accepts connections
            deadline = time.monotonic() + 30
            while subprocess.run([f"{bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
                if time.monotonic() > deadline:
                    unavailable("the private PostgreSQL server did not accept connections within 30 s")
                time.sleep(0.1)
            yield port
    finally:
        shutil.rmtree(base, ignore_errors=True)
