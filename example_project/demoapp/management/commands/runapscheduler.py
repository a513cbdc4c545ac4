"""An APScheduler runner guarded by celery_leader.apscheduler: start one on every host.

Every instance runs the scheduler; only the leader's jobs fire (the guard pauses the
others). The job records the instance and fencing token.
"""

import signal
from typing import Any

from apscheduler.schedulers.blocking import BlockingScheduler
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from celery_leader.apscheduler import current_token, guard
from demoapp.models import Run


def record_job(instance: str) -> None:
    close_old_connections()
    try:
        Run.objects.create(kind="apscheduler", instance=instance, token=current_token("example.apscheduler"))
    finally:
        close_old_connections()


class Command(BaseCommand):
    help = "Run the APScheduler jobs, only on the leader."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--every", type=float, default=10.0, help="seconds between job runs")

    def handle(self, *args: Any, **options: Any) -> None:
        conf = settings.LEADER_ELECTION
        scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        leader_guard = guard(
            scheduler,
            url=conf["URL"],
            name="example.apscheduler",
            identity=conf["IDENTITY"],
            lease_duration=conf["LEASE_DURATION"],
            renew_deadline=conf["RENEW_DEADLINE"],
            retry_period=conf["RETRY_PERIOD"],
        )
        instance = leader_guard.election.identity
        scheduler.add_job(record_job, "interval", seconds=options["every"], args=[instance], id="record")
        signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
        self.stdout.write(f"APScheduler {instance} started (jobs run only while leading)")
        scheduler.start()
        leader_guard.close()
