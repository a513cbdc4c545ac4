"""Fixtures for the Redis backend tests: the shared Redis on 6379 with a fresh key prefix,
and private ``redis-server`` / ``redis-sentinel`` processes on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_leader.backends.redis import RedisBackend
from tests.elections import elections  # noqa: F401 - the fixture, for the fault tests
from tests.servers import closed_afterwards, free_port, freeze, need_binary, stop_process, unavailable, wait_for_port

SHARED_PORT = 6379


def _ping(port: int, **kw: object) -> bool:
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0), **kw)
        return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError):
        return True  # it answers: ready, just not for us
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def shared_redis() -> redis.Redis:
    """The Redis every test machine runs on 127.0.0.1:6379."""
    if not _ping(SHARED_PORT):
        unavailable("no Redis on 127.0.0.1:6379 (start one: redis-server --port 6379 --save '')")
    return redis.Redis(host="127.0.0.1", port=SHARED_PORT)


@pytest.fixture
def prefix(shared_redis: redis.Redis) -> Iterator[str]:
    """A fresh key prefix on the shared Redis; every key under it is deleted afterwards."""
    value = f"test-{uuid.uuid4().hex[:10]}:"
    yield value
    keys = list(shared_redis.scan_iter(match=value + "*", count=1000))
    if keys:
        shared_redis.delete(*keys)


@pytest.fixture
def open_backend() -> Iterator[Callable[[str], RedisBackend]]:
    """``open_backend(url)``: a backend closed at teardown."""
    yield from closed_afterwards(RedisBackend.from_url)


class RedisServer:
    """A private ``redis-server`` on a free port (kill, pause and restart it freely)."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None) -> None:
        self.binary = need_binary("redis-server", "apt-get install redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no",
            "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"), *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> "RedisServer":
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if wait_for_port(self.port, 0.2) and self.ready():
                return self
        log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:] if (self.workdir / "redis.log").exists() else ""
        self.stop()
        unavailable(f"redis-server did not start on 127.0.0.1:{self.port}: {log}")
        return self

    def ready(self) -> bool:
        return _ping(self.port)

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        freeze(self.proc.pid)

    def resume(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def make(*extra: str, name: str | None = None, start: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / (name or f"redis{len(started)}"), *extra)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in reversed(started):  # replicas first: a primary's SIGTERM waits for its replicas to catch up
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()
