"""The cron job: run it as ``manage.py runasleader --once-per 1d nightly`` from cron on every host."""

from typing import Any

from django.core.management.base import BaseCommand

from demoapp.models import Run
from django_leader.runner import current_leadership


class Command(BaseCommand):
    help = "Record one nightly run (meant to be started through runasleader --once-per)."

    def handle(self, *args: Any, **options: Any) -> None:
        lead = current_leadership()
        Run.objects.create(
            kind="cron", instance=lead.identity if lead else "unguarded", token=lead.token if lead else None
        )
