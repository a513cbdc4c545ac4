"""One small adapter per fenced store, so that every test runs on every store.

A store is described by a JSON-able spec (the frozen-leader child process gets the same
specs on its command line) and opened with :func:`open_store`; ``write(token, value)``
goes through the fenced helper, ``read()`` returns the value the store holds now.
"""

from __future__ import annotations

import uuid
from typing import Any

KINDS = ("redis-set", "redis-hset", "redis-xadd", "sqlite", "postgresql", "mariadb", "s3")
#: also ``redis-plain``: a plain SET that ignores the token (the benchmark's control)


class Store:
    kind: str

    def write(self, token: Any, value: str) -> None:
        raise NotImplementedError

    def read(self) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RedisStore(Store):
    def __init__(self, spec: dict) -> None:
        import redis

        self.spec = spec
        self.kind = spec["kind"]
        self.key = spec["key"]
        self.client = redis.Redis.from_url(spec["url"], socket_timeout=10)

    def write(self, token: Any, value: str) -> None:
        from celery_leader.fencing import redis as fr

        if self.kind == "redis-plain":  # no fencing at all: what a lease alone gives
            self.client.set(self.key, value)
        elif self.kind == "redis-set":
            fr.fenced_set(self.client, self.key, token, value)
        elif self.kind == "redis-hset":
            fr.fenced_hset(self.client, self.key, token, {"v": value})
        else:
            fr.fenced_xadd(self.client, self.key, token, {"v": value})

    def read(self) -> str | None:
        if self.kind in ("redis-set", "redis-plain"):
            raw = self.client.get(self.key)
        elif self.kind == "redis-hset":
            raw = self.client.hget(self.key, "v")
        else:
            last = self.client.xrevrange(self.key, count=1)
            raw = last[0][1][b"v"] if last else None
        return None if raw is None else raw.decode()

    def close(self) -> None:
        self.client.close()


class SqlStore(Store):
    def __init__(self, spec: dict) -> None:
        import sqlalchemy as sa

        from celery_leader.fencing.sql import fence_column

        self.spec = spec
        self.kind = spec["kind"]
        self.engine = sa.create_engine(spec["url"])
        self.row = spec.get("row", "k")
        self.table = sa.Table(spec["table"], sa.MetaData(), sa.Column("name", sa.String(64), primary_key=True),
                              sa.Column("body", sa.Text), fence_column())

    def write(self, token: Any, value: str) -> None:
        from celery_leader.fencing.sql import fenced_write

        with self.engine.begin() as conn:
            fenced_write(conn, self.table, {"name": self.row}, {"body": value}, token)

    def read(self) -> str | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.table.c.body).where(self.table.c.name == self.row)).scalar()

    def close(self) -> None:
        self.engine.dispose()


class S3Store(Store):
    def __init__(self, spec: dict) -> None:
        import boto3
        from botocore.config import Config

        self.spec = spec
        self.kind = spec["kind"]
        self.bucket, self.key = spec["bucket"], spec["key"]
        self.client = boto3.client(
            "s3", endpoint_url=spec["endpoint"], aws_access_key_id=spec["access_key"],
            aws_secret_access_key=spec["secret_key"], region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def write(self, token: Any, value: str) -> None:
        from celery_leader.fencing.s3 import fenced_put

        fenced_put(self.client, self.bucket, self.key, value.encode(), token)

    def read(self) -> str | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None


def fresh(spec: dict, i: int) -> dict:
    """Another empty resource beside ``spec``'s: a new row of the same table, a new key or object."""
    if "table" in spec:
        return {**spec, "row": f"row-{i}"}
    return {**spec, "key": f"{spec['key']}-{i}"}


def open_store(spec: dict) -> Store:
    kind = spec["kind"]
    if kind.startswith("redis-"):
        return RedisStore(spec)
    if kind.startswith("s3"):
        return S3Store(spec)
    return SqlStore(spec)


def unique(prefix: str = "fence") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
