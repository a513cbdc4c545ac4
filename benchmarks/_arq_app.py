"""An arq worker for ``python -m benchmarks queues arq``: a cron job every second, recorded.

``ARQ_BENCH_QUEUE``, ``ARQ_BENCH_LOG``, ``ARQ_BENCH_KEEP`` (the cron job's keep_result, s),
``ARQ_BENCH_NAME`` (the cron job's name: arq's job ids are not per queue).
"""

from __future__ import annotations

import json
import os
import time

from arq import cron
from arq.connections import RedisSettings


async def tick(ctx: dict) -> None:
    with open(os.environ["ARQ_BENCH_LOG"], "a") as fh:
        fh.write(json.dumps({"id": ctx["job_id"], "pid": os.getpid(), "t": time.time()}) + "\n")


KEEP = float(os.environ.get("ARQ_BENCH_KEEP", "0"))


class WorkerSettings:
    redis_settings = RedisSettings(host="127.0.0.1", port=6379)
    queue_name = os.environ.get("ARQ_BENCH_QUEUE", "cl-arq-bench")
    cron_jobs = [cron(tick, name=os.environ.get("ARQ_BENCH_NAME", "cron:tick"), second=set(range(60)), keep_result=KEEP)]
