"""``manage.py rqcron_leader CONFIG``: django-rq's ``rqcron`` on every host; only the leader enqueues.

The elected variant of django-rq's ``rqcron`` (same arguments). Election settings:
``settings.RQ["LEADER_ELECTION"]``, then ``settings.LEADER_ELECTION``; the lock defaults to
the Redis of the cron jobs' queues. See docs/rq.md.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from celery_leader.errors import ConfigurationError


class Command(BaseCommand):
    help = "Starts RQ's cron scheduler on this host; only the elected one enqueues (celery-leader)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("config_path", help="cron configuration file or module path")
        parser.add_argument("--logging-level", "-l", default="INFO",
                            choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
        parser.add_argument("--catch-up", choices=["once", "skip"], default=None,
                            help="runs that fell due during a failover: run once (default) or skip")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            from celery_leader.integrations.rq.django import DjangoLeaderCronScheduler
        except ImportError as exc:
            raise CommandError(f"rqcron_leader needs django-rq: pip install 'celery-leader[django-rq]' ({exc})") from None
        leader = {"CATCH_UP": options["catch_up"]} if options["catch_up"] else None
        try:
            scheduler = DjangoLeaderCronScheduler(logging_level=getattr(logging, options["logging_level"]), leader=leader)
            scheduler.load_config_from_file(options["config_path"])
            self.stdout.write(f"Starting the elected cron scheduler with {len(scheduler.get_jobs())} jobs...")
            scheduler.start()
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        except (ImportError, ValueError) as exc:
            raise CommandError(f"cannot load {options['config_path']!r}: {exc}") from None
        except KeyboardInterrupt:
            pass
