"""RQ job functions for tests/fencing (RQ imports a job's function by its dotted path)."""

from __future__ import annotations

from celery_leader.fencing.redis import fenced_rpush
from celery_leader.fencing.rq import fenced_job


@fenced_job(refuse_stale=True)
def append(key: str, value: str, fencing_token: int | None = None) -> int:
    import redis

    with redis.Redis(host="127.0.0.1", port=6379) as client:
        return fenced_rpush(client, key, fencing_token, value)


@fenced_job
def token_of(fencing_token: int | None = None) -> int | None:
    return fencing_token
