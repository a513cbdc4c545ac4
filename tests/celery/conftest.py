"""Fixtures: the brokers (Redis and RabbitMQ on 127.0.0.1), the lock URL, a throwaway PostgreSQL database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid

import pytest

from tests.servers import free_port, need_binary, port_open, unavailable, wait_for_port

from .harness import ROOT, Deployment

REDIS_BROKER = "redis://127.0.0.1:6379/0"
RABBIT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(autouse=True)
def _celery_tests_need_celery():
    pytest.importorskip("celery")


@pytest.fixture
def redis_broker() -> str:
    if not port_open(6379):
        unavailable("Redis is not listening on 127.0.0.1:6379 (the Celery broker for these tests)")
    return REDIS_BROKER


@pytest.fixture
def rabbit_broker() -> str:
    if not port_open(5672):
        unavailable("RabbitMQ is not listening on 127.0.0.1:5672 (guest/guest)")
    return RABBIT_BROKER


@pytest.fixture
def lock_url(tmp_path) -> str:
    """The election backend for every Celery test: one fixture, so it can be switched in one place.

    Redis (127.0.0.1:6379, a private key prefix) when the redis:// backend is importable,
    else the file:// backend in the test's directory (``CELERY_LEADER_CELERY_LOCK=file``
    forces it).
    """
    locks = tmp_path / "locks"
    locks.mkdir(exist_ok=True)
    if os.environ.get("CELERY_LEADER_CELERY_LOCK") == "file":
        return f"file://{locks}"
    try:
        import celery_leader.backends.redis  # noqa: F401
    except ImportError:
        return f"file://{locks}"
    if not port_open(6379):
        unavailable("Redis is not listening on 127.0.0.1:6379 (the lock backend for these tests)")
    return f"redis://127.0.0.1:6379/0?prefix=clt-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def deployment(tmp_path, lock_url, redis_broker):
    with Deployment(tmp_path / "run", lock_url, redis_broker) as dep:
        yield dep
        _drop_redis_queue(dep.queue)


def _drop_redis_queue(queue: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_timeout=2)
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()


@pytest.fixture
def postgres_db():
    """A throwaway PostgreSQL database with django-celery-beat's tables; dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    if not port_open(5432):
        unavailable("PostgreSQL is not listening on 127.0.0.1:5432")
    name = f"clt_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.Error as exc:
        unavailable(f"cannot connect to PostgreSQL as postgres on 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "CLT_DJANGO_DB": name, "DJANGO_SETTINGS_MODULE": "tests.celery.django_settings"}
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120
        )
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


class PrivateRedis:
    """A ``redis-server`` of our own on a free 127.0.0.1 port, to take away and give back."""

    def __init__(self, binary: str, port: int, workdir) -> None:
        self.binary, self.port, self.workdir = binary, port, workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, 10):
            unavailable(f"redis-server did not listen on 127.0.0.1:{self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path):
    binary = need_binary("redis-server", "apt-get install redis-server")
    server = PrivateRedis(binary, free_port(), tmp_path)
    try:
        yield server
    finally:
        server.kill()
