"""What the RQ process tests run: a job that records who enqueued it, and scoped schedulers.

Every process of a test shares one tag (``CLT_RQ_TAG``); the rq-scheduler classes below
keep their keys under it, so tests never touch another run's (or a user's) schedule.
"""

from __future__ import annotations

import json
import os
import time

from rq import get_current_job

from celery_leader.integrations.rq import sent_token

try:  # not in [all]: rq-scheduler's `crontab` and django-celery-beat's clash (tox -e rq-scheduler)
    from rq_scheduler import Scheduler

    from celery_leader.integrations.rq.rqscheduler import LeaderScheduler
except ImportError:
    Scheduler = LeaderScheduler = None  # type: ignore[assignment,misc]

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


def scoped_keys(tag: str) -> dict[str, str]:
    """rq-scheduler's Redis keys, moved under ``tag``."""
    return {
        "scheduled_jobs_key": f"clt-rq:{tag}:scheduled_jobs",
        "scheduler_lock_key": f"clt-rq:{tag}:scheduler_lock",
        "redis_scheduler_namespace_prefix": f"clt-rq:{tag}:instance:",
        "scheduler_key": f"clt-rq:{tag}:scheduler",
    }


if Scheduler is not None:
    #: ours, with this run's keys
    ScopedScheduler = type("ScopedScheduler", (LeaderScheduler,), {**scoped_keys(TAG), "__module__": __name__})
    #: rq-scheduler's own (TTL lock), with this run's keys: the benchmark's peer
    PlainScopedScheduler = type("PlainScopedScheduler", (Scheduler,), {**scoped_keys(TAG), "__module__": __name__})
