"""The task celery beat sends. It records the beat instance and fencing token from the headers."""

import os

from celery import shared_task

from .models import Run


@shared_task(bind=True)
def record_beat(self) -> None:
    headers = getattr(self.request, "headers", None) or {}

    def header(key: str):
        value = getattr(self.request, key, None)
        return value if value is not None else headers.get(key)

    Run.objects.create(
        kind="beat",
        instance=header("celery_leader_identity") or "?",
        token=header("celery_leader_token"),
        worker=os.environ.get("EXAMPLE_INSTANCE", ""),
    )
