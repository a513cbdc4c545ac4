"""A badly behaved job: swallows every exception, including LeadershipLost, and keeps going."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("logfile")

    def handle(self, *args: Any, **options: Any) -> None:
        fd = os.open(options["logfile"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        while True:
            try:
                os.write(fd, (json.dumps({"e": "beat", "t": time.time()}) + "\n").encode())
                time.sleep(0.02)
            except BaseException:  # noqa: B036 - the point of this command
                os.write(fd, (json.dumps({"e": "swallowed", "t": time.time()}) + "\n").encode())
