"""Real stores for the fencing tests: Redis 6379, PostgreSQL 5432, MariaDB 3306, SQLite, moto S3.

Every test gets its own key, table or object (unique names, removed afterwards), so the
shared servers are left as found. A server that is not there skips on a laptop and fails
with ``CELERY_LEADER_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from tests.fencing.stores import KINDS, open_store, unique
from tests.s3.conftest import moto_server, seaweed_server  # noqa: F401 - the S3 server fixtures, reused
from tests.servers import port_open, unavailable

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIA_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
PORTS = {"redis": 6379, "postgresql": 5432, "mariadb": 3306}


def _need(server: str) -> None:
    if not port_open(PORTS[server]):
        unavailable(f"{server} on 127.0.0.1:{PORTS[server]} not reachable")


@pytest.fixture
def make_spec(request, tmp_path) -> Iterator[Callable[[str], dict]]:
    """``make_spec(kind)``: a fresh, empty resource of that kind; dropped after the test."""
    cleanups: list[Callable[[], None]] = []

    def make(kind: str) -> dict:
        if kind.startswith("redis-"):
            _need("redis")
            import redis

            key = unique("fence-test") + ":" + kind
            client = redis.Redis.from_url(REDIS_URL)
            cleanups.append(lambda: (client.delete(key, key + ":fence"), client.close()))
            return {"kind": kind, "url": REDIS_URL, "key": key}
        if kind.startswith("s3"):  # s3: moto; s3-seaweedfs: a real SeaweedFS
            server = request.getfixturevalue("seaweed_server" if kind == "s3-seaweedfs" else "moto_server")
            return {"kind": kind, "endpoint": server.endpoint, "bucket": server.bucket, "key": unique("fence") + ".txt",
                    "access_key": server.access_key, "secret_key": server.secret_key}
        import sqlalchemy as sa

        from celery_leader.fencing.sql import fence_column

        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / unique()}.db"
        else:
            _need(kind)
            url = PG_URL if kind == "postgresql" else MARIA_URL
        spec = {"kind": kind, "url": url, "table": unique()}
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        meta = sa.MetaData()
        sa.Table(spec["table"], meta, sa.Column("name", sa.String(64), primary_key=True), sa.Column("body", sa.Text),
                 fence_column())
        meta.create_all(engine)
        cleanups.append(lambda: meta.drop_all(engine))
        return spec

    yield make
    for cleanup in cleanups:
        cleanup()


@pytest.fixture(params=KINDS)
def store(request, make_spec):
    """Each fenced store in turn, empty."""
    opened = open_store(make_spec(request.param))
    try:
        yield opened
    finally:
        opened.close()
