"""The backend contract suite against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import redis

from celery_leader.testing import LockContract

from .conftest import RedisServer


class TestRedisLock(LockContract):
    @pytest.fixture
    def backend_url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:6379/0?prefix={prefix}"

    @pytest.fixture
    def write_raw(self, prefix: str, shared_redis: redis.Redis):
        return lambda name, raw: shared_redis.set(f"{prefix}lock:{name}", raw)

    @pytest.fixture
    def stalled_lock(self, redis_server_factory: Callable[..., RedisServer], open_backend):
        @contextlib.contextmanager
        def stalled(name: str):
            server = redis_server_factory()
            lock = open_backend(server.url).lock(name)
            lock.get(5.0)  # connected before the server stops answering
            server.pause()
            try:
                yield lock
            finally:
                server.resume()

        return stalled
