"""An arq app for the process tests: a cron job every second, recorded by the worker.

``ARQ_TEST_QUEUE`` (queue name; the cron job's name too, since arq's job ids are not per
queue), ``ARQ_TEST_LOG`` (JSON lines). ``keep_result`` stays arq's default for cron jobs (0),
the setting under which arq's own deduplication is weakest.
"""

from __future__ import annotations

import json
import os
import time

from arq import cron
from arq.connections import RedisSettings

QUEUE = os.environ.get("ARQ_TEST_QUEUE", "cl-arq-test")


async def tick(ctx: dict) -> None:
    line = {"slot": ctx["job_id"].rsplit(":", 1)[1], "token": None, "pid": os.getpid(), "t": time.time()}
    with open(os.environ["ARQ_TEST_LOG"], "a") as fh:
        fh.write(json.dumps(line) + "\n")


class WorkerSettings:
    redis_settings = RedisSettings(host="127.0.0.1", port=6379)
    queue_name = QUEUE
    cron_jobs = [cron(tick, name=f"cron:{QUEUE}", second=set(range(60)))]
    leader_lease_duration = 1.0
    leader_renew_deadline = 0.6
    leader_retry_period = 0.2
