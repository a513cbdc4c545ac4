"""A command guarded by ``leader_only`` (skip mode): prints its token."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from django_leader import leader_only
from django_leader.runner import current_leadership


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--seconds", type=float, default=0.0)

    @leader_only(skip=True)
    def handle(self, *args: Any, **options: Any) -> None:
        import time

        time.sleep(options["seconds"])
        lead = current_leadership()
        self.stdout.write(f"ran with token {lead.token if lead else None}")
