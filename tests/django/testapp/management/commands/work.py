"""A stand-in for a cron job: logs start/beat/stop lines like celery_leader.testing.child."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from django.core.management.base import BaseCommand

from django_leader.runner import current_leadership


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("logfile")
        parser.add_argument("--seconds", type=float, default=3600.0)
        parser.add_argument("--beat", type=float, default=0.02)
        parser.add_argument("--node", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        lead = current_leadership()
        fd = os.open(options["logfile"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        base = {
            "node": options["node"] or (lead.identity if lead else ""),
            "token": lead.token if lead else -1,
            "pid": os.getpid(),
        }

        def log(event: str) -> None:
            os.write(fd, (json.dumps({"e": event, "t": time.time(), **base}) + "\n").encode())

        log("start")
        until = time.monotonic() + options["seconds"]
        try:
            while time.monotonic() < until:
                log("beat")
                time.sleep(options["beat"])
        finally:
            log("stop")
            os.close(fd)
