"""A command guarded by ``leader_only(once_per="1h")``: runs once per hourly slot across hosts."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from django_leader import leader_only


class Command(BaseCommand):
    @leader_only(once_per="1h")
    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write("ran")
