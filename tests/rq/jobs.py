"""What the RQ process tests run: a job that records who enqueued it, and scoped schedulers.

Every process of a test shares one tag (``CLT_RQ_TAG``); the rq-scheduler classes below
keep their keys under it, so tests never touch another run's (or a user's) schedule.
"""

from __future__ import annotations

import json
import os
import time

from rq import get_current_job
from rq_scheduler import Scheduler

from celery_leader.integrations.rq import sent_token
from celery_leader.integrations.rq.rqscheduler import LeaderScheduler

TAG = os.environ.get("CLT_RQ_TAG", "untagged")


def record(path: str) -> None:
    """Append one JSON line: job id, the fencing token it carries, when it ran."""
    job = get_current_job()
    line = json.dumps({"id": job.id, "token": sent_token(job), "ran": time.time(), "meta": dict(job.meta)})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class _Scoped:
    scheduled_jobs_key = f"clt-rq:{TAG}:scheduled_jobs"
    scheduler_lock_key = f"clt-rq:{TAG}:scheduler_lock"
    redis_scheduler_namespace_prefix = f"clt-rq:{TAG}:instance:"
    scheduler_key = f"clt-rq:{TAG}:scheduler"


class ScopedScheduler(_Scoped, LeaderScheduler):
    """Ours, with this test's keys."""


class PlainScopedScheduler(_Scoped, Scheduler):
    """rq-scheduler's own (TTL lock), with this test's keys: the benchmark's peer."""
