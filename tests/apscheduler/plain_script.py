"""A plain APScheduler script as users write it: no signal handling, no shutdown() call.

It logs at INFO (to stderr), as a deployed script would: the tests read its lines.

``python -m tests.apscheduler.plain_script URL NAME IDENTITY LOG blocking|background [--no-signals]``
"""

from __future__ import annotations

import logging
import os
import sys
import time

from celery_leader.apscheduler import current_token, guard

url, name, identity, log, kind = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
handle_signals = "--no-signals" not in sys.argv


def job() -> None:
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {current_token()}\n")


if kind == "blocking":
    from apscheduler.schedulers.blocking import BlockingScheduler

    sched = BlockingScheduler()
else:
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler()
# a long lease: a standby that had to wait it out would take 30 s
guard(sched, url=url, name=name, identity=identity, lease_duration=30, renew_deadline=20, retry_period=0.5,
      handle_signals=handle_signals)  # fmt: skip
sched.add_job(job, "interval", seconds=0.2)
sched.start()
if kind == "background":
    while True:
        time.sleep(1)
