"""A one-shot slow enqueue cycle, loaded into RQ's own processes by the RQ tests and benchmark.

A job whose ``meta`` holds ``STALL`` makes the first process that loads it sleep that many
seconds (once per job: a Redis ``SET NX`` decides who sleeps). That is the "enqueue cycle
longer than the lock's TTL" of RQ #1354/#2338 and rq-scheduler #312 (a huge batch, a slow
network, a stop-the-world pause), made repeatable.

* :class:`SlowOnce`: a serializer (``rq worker --serializer``), for RQ's built-in
  scheduler, which loads due jobs with ``Job.fetch_many(..., serializer=...)``;
* :class:`SlowJob`: a job class (``rqscheduler -j``), for rq-scheduler, which loads due
  jobs with ``job_class.fetch``.
"""

from __future__ import annotations

import os
import pickle
import time
from functools import partial
from typing import Any

import redis
from rq.job import Job

STALL = "bench_stall_s"
KEY = "bench_stall_key"


def _stall(meta: Any) -> None:
    if isinstance(meta, dict) and meta.get(STALL):
        client = redis.Redis.from_url(os.environ.get("CLT_RQ_REDIS", "redis://127.0.0.1:6379/0"))
        try:
            if client.set(str(meta[KEY]), str(os.getpid()), nx=True, ex=3600):
                time.sleep(float(meta[STALL]))
        finally:
            client.close()


class SlowOnce:
    """RQ's default (pickle) serializer, stalling on the first load of a marked ``meta``."""

    dumps = partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        value = pickle.loads(data)
        _stall(value)
        return value


class SlowJob(Job):
    """A job class whose first load of a marked job stalls (rq-scheduler fetches with it)."""

    def restore(self, raw_data: Any) -> Any:
        result = super().restore(raw_data)
        _stall(self.meta)
        return result
