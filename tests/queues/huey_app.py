"""A Huey app for the process tests: one periodic task per 1-s slot, recorded by the worker.

Configured from the environment so that every test has its own queue:
``HUEY_TEST_NAME`` (queue name), ``HUEY_TEST_LOG`` (JSON lines written by the task),
``HUEY_TEST_SLOT`` (slot length in seconds, default 1); ``HUEY_TEST_INSTALL=1`` calls
``install()`` so that Huey's own ``huey_consumer`` elects (``HUEY_TEST_IDENTITY``).
"""

from __future__ import annotations

import json
import os
import time

from huey import RedisHuey
from huey.consumer import Scheduler

from celery_leader.integrations.huey import LeaderScheduler, install, message_slot, message_token

LeaderScheduler.periodic_task_seconds = int(os.environ.get("HUEY_TEST_SLOT", "1"))
# plain ``huey_consumer`` (the benchmark's peers) checks periodic tasks as often
Scheduler.periodic_task_seconds = LeaderScheduler.periodic_task_seconds

huey = RedisHuey(os.environ.get("HUEY_TEST_NAME", "cl-huey-test"), url="redis://127.0.0.1:6379/0", results=False)
if os.environ.get("HUEY_TEST_INSTALL"):
    # Huey's own ``huey_consumer`` command, made to elect (identity from the environment)
    install(huey, url="redis://127.0.0.1:6379/0", identity=os.environ.get("HUEY_TEST_IDENTITY"),
            lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)  # fmt: skip


def every_slot(ts) -> bool:
    return True


@huey.periodic_task(every_slot, context=True)
def tick(task=None) -> None:
    """Record which slot ran, under which token, in which consumer process."""
    line = {"slot": message_slot(task), "token": message_token(task), "pid": os.getpid(), "t": time.time(), "id": task.id}
    with open(os.environ["HUEY_TEST_LOG"], "a") as fh:
        fh.write(json.dumps(line) + "\n")
