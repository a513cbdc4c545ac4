"""``manage.py leaderstatus``: every election in the ``django://`` lease table.

The same judgement and lines as ``celery-leader status`` (:mod:`celery_leader.status`):
held / expired / free / unreadable, the fencing token, how long ago the lease was renewed
against the lease (by the holder's wall clock: informational only, elections never compare
clocks) and the last slot done by once-per-slot.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from celery_leader.record import printable
from celery_leader.urls import redact

from ...conf import SettingsError, leader_settings
from ...status import configured_alias, lease_rows, line


class Command(BaseCommand):
    help = "List the elections stored in the database: state, holder, token, time since renewal, last slot."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=None, help="database alias (default: the one of LEADER_ELECTION URL)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.db import DatabaseError

        try:
            alias = options["database"] or configured_alias()
        except SettingsError as exc:
            raise CommandError(f"{exc}; fix settings.LEADER_ELECTION or give --database ALIAS") from None
        if alias is None:
            url = redact(leader_settings().url)
            raise CommandError(
                f"LEADER_ELECTION['URL'] is {url}, not django://: the leases are not in this database; "
                f"use: celery-leader status --url {url} --name NAME"
            )
        try:
            rows = lease_rows(alias)
        except DatabaseError as exc:
            raise CommandError(
                f"cannot read the lease table of database {alias!r} ({type(exc).__name__}: {printable(redact(str(exc)))}); "
                f"run: python manage.py migrate django_leader --database {alias}"
            ) from exc
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2, sort_keys=True))
            return
        if not rows:
            self.stdout.write("no elections recorded")
            return
        # the lines of `celery-leader status`, one per election
        for row in rows:
            self.stdout.write(f"{printable(row['name'])}: {line(row)}")
        if any(row["state"] in ("held", "expired") for row in rows):
            self.stdout.write("(held/expired judged from each record's renewTime and this host's clock)")
