"""Fixtures for the once-per-slot tests: a lock URL per backend (file://, the shared Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import unavailable


def _redis_url() -> Iterator[str]:
    try:
        import redis
    except ImportError:
        unavailable("redis-py is not installed (pip install 'celery-leader[redis]')")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable("no Redis on 127.0.0.1:6379")
    prefix = f"test-once-{uuid.uuid4().hex[:8]}:"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["file", "redis"])
def lock_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "file":
        locks = tmp_path / "locks"
        locks.mkdir()
        yield f"file://{locks}"
    else:
        yield from _redis_url()
