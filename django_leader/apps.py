"""The app config. ``ready()`` registers system checks and nothing else.

Starting an election in ``ready()`` is the classic mistake (django-apscheduler #21, #150):
it would run in ``migrate``, ``shell``, the test runner, the autoreloader's parent and in
every gunicorn worker. Elections start only where a leader is wanted.
"""

from __future__ import annotations

from django.apps import AppConfig


class DjangoLeaderConfig(AppConfig):
    name = "django_leader"
    label = "django_leader"
    verbose_name = "Leader election"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the checks
