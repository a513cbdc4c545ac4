"""A Dramatiq app with one periodiq actor for the process tests, recorded by the worker.

``PERIODIQ_TEST_QUEUE`` (Redis namespace), ``PERIODIQ_TEST_LOG`` (JSON lines written by the
actor). The schedulers run with ``--slot-seconds 1``, so the every-minute spec runs every second.
"""

from __future__ import annotations

import json
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from periodiq import PeriodiqMiddleware, cron

from celery_leader.integrations.periodiq import message_slot, message_token

broker = RedisBroker(url="redis://127.0.0.1:6379/0", namespace=os.environ.get("PERIODIQ_TEST_QUEUE", "cl-periodiq"))
broker.add_middleware(CurrentMessage())
broker.add_middleware(PeriodiqMiddleware(skip_delay=30))
dramatiq.set_broker(broker)


@dramatiq.actor(periodic=cron("* * * * *"), max_retries=0)
def tick() -> None:
    message = CurrentMessage.get_current_message()
    line = {"slot": message_slot(message), "token": message_token(message), "pid": os.getpid(), "t": time.time()}
    with open(os.environ["PERIODIQ_TEST_LOG"], "a") as fh:
        fh.write(json.dumps(line) + "\n")
