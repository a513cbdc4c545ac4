"""A process with a BackgroundScheduler guarded by celery-leader (used by the tests).

``python -m tests.apscheduler.app --url URL --name NAME --identity ID --log FILE
[--store DB_URL]``: an interval job every 0.5 s; each run appends a JSON line with the
scheduled time, wall time, pid and fencing token. With ``--store``, the jobs live in a
shared SQLAlchemy job store behind :class:`LeaderJobStore`; otherwise in a per-process
memory store behind :func:`guard`. SIGTERM shuts the scheduler down (and releases).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler

from celery_leader.apscheduler import LeaderJobStore, current_token, guard, is_leader

TIMING = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


def record_run() -> None:
    """The job: acts only if still leader, and tags its work with the fencing token."""
    if not is_leader():
        return
    with open(os.environ["APS_TEST_LOG"], "a") as fh:
        fh.write(json.dumps({"e": "run", "t": time.time(), "pid": os.getpid(), "token": current_token()}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--store", default=None)
    p.add_argument("--misfire", type=int, default=1, help="misfire_grace_time (s)")
    p.add_argument("--no-coalesce", action="store_true")
    p.add_argument("--catch-up", action="store_true", help="guard(catch_up=True)")
    args = p.parse_args()
    os.environ["APS_TEST_LOG"] = args.log  # the job may be imported under another module name
    defaults = {"misfire_grace_time": args.misfire, "coalesce": not args.no_coalesce, "max_instances": 1}
    sched = BackgroundScheduler(job_defaults=defaults)

    def executed(event) -> None:
        with open(args.log, "a") as fh:
            fh.write(json.dumps({"e": "scheduled", "s": event.scheduled_run_time.timestamp(), "pid": os.getpid()}) + "\n")

    sched.add_listener(executed, EVENT_JOB_EXECUTED)
    if args.store:
        store = LeaderJobStore({"type": "sqlalchemy", "url": args.store}, url=args.url, name=args.name,
                               identity=args.identity, **TIMING)  # fmt: skip
        sched.add_jobstore(store, "default")
        sched.add_job("tests.apscheduler.app:record_run", "interval", seconds=0.5, id="tick", replace_existing=True)
    else:
        guard(sched, url=args.url, name=args.name, identity=args.identity, catch_up=args.catch_up, **TIMING)
        sched.add_job(record_run, "interval", seconds=0.5, id="tick")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    sched.start()
    while not stop.wait(0.2):
        pass
    sched.shutdown(wait=True)
    time.sleep(0.05)


if __name__ == "__main__":
    main()
