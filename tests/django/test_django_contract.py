"""The lock contract suite on the django:// backend, against SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from django.db import connections

from celery_leader.testing import LockContract


def _stall(alias: str):
    """A connection that holds the lease table so that every other statement waits."""
    settings = connections.settings[alias]
    vendor = connections[alias].vendor
    if vendor == "sqlite":
        conn = sqlite3.connect(settings["NAME"], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        return lambda: (conn.rollback(), conn.close())
    if vendor == "postgresql":
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=settings["NAME"])
        cur = conn.cursor()
        cur.execute("LOCK TABLE django_leader_lease IN ACCESS EXCLUSIVE MODE")  # inside a transaction
        return lambda: (conn.rollback(), conn.close())
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=settings["NAME"])
    cur = conn.cursor()
    cur.execute("LOCK TABLES django_leader_lease WRITE")
    return lambda: (cur.execute("UNLOCK TABLES"), conn.close())


class TestDjangoLockContract(LockContract):
    @pytest.fixture
    def backend_url(self, alias):
        return f"django://{alias}"

    @pytest.fixture
    def write_raw(self, make_lock):
        return lambda name, raw: make_lock(name).write_raw(raw)

    @pytest.fixture
    def stalled_lock(self, make_lock, alias):
        @contextlib.contextmanager
        def stalled(name: str):
            lock = make_lock(name)
            lock.get(5.0)  # connect before the table is held
            release = _stall(alias)
            try:
                yield lock
            finally:
                release()

        return stalled
