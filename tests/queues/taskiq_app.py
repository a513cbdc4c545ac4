"""A taskiq app for the process tests: an interval schedule of 1 s, recorded by the worker.

``TASKIQ_TEST_QUEUE`` (queue and election name), ``TASKIQ_TEST_LOG`` (JSON lines written by
the task), ``TASKIQ_TEST_IDENTITY`` (this scheduler's identity), ``TASKIQ_TEST_URL``.
"""

from __future__ import annotations

import json
import os
import time

from taskiq import Context, TaskiqDepends, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker

from celery_leader.integrations.taskiq import LeaderScheduler, message_slot, message_token

QUEUE = os.environ.get("TASKIQ_TEST_QUEUE", "cl-taskiq-test")
broker = ListQueueBroker("redis://127.0.0.1:6379/0", queue_name=QUEUE)


@broker.task(schedule=[{"interval": 1, "schedule_id": "tick"}])
async def tick(context: Context = TaskiqDepends()) -> None:
    line = {"slot": message_slot(context), "token": message_token(context), "pid": os.getpid(), "t": time.time()}
    with open(os.environ["TASKIQ_TEST_LOG"], "a") as fh:
        fh.write(json.dumps(line) + "\n")


scheduler = LeaderScheduler(
    broker, sources=[LabelScheduleSource(broker)], url=os.environ.get("TASKIQ_TEST_URL", "redis://127.0.0.1:6379/0"),
    name=f"taskiq.{QUEUE}", identity=os.environ.get("TASKIQ_TEST_IDENTITY"),
    lease_duration=1.0, renew_deadline=0.6, retry_period=0.2,
)  # fmt: skip

#: taskiq's own scheduler, for the benchmark's peers
plain_scheduler = TaskiqScheduler(broker, sources=[LabelScheduleSource(broker)])
