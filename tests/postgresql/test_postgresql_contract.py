"""The backend contract suite on postgresql:// against the PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import contextlib

import pytest

from celery_leader.testing import LockContract


class TestPostgresLock(LockContract):
    @pytest.fixture
    def backend_url(self, pg_url):
        return pg_url

    @pytest.fixture
    def write_raw(self, make_lock):
        return lambda name, raw: make_lock(name).write_raw(raw)

    @pytest.fixture
    def stalled_lock(self, proxy, pg_database, open_backend):
        @contextlib.contextmanager
        def stalled(name: str):
            lock = open_backend(f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}").lock(name)
            lock.get(5.0)  # connected before the server stops answering
            proxy.set_mode("blackhole")
            try:
                yield lock
            finally:
                proxy.set_mode("pass")

        return stalled
