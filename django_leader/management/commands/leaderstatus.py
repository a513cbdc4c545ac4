"""``manage.py leaderstatus``: every election in the ``django://`` lease table.

Shows holder, fencing token and how long ago the lease was renewed (by the holder's wall
clock: informational only, elections never compare clocks).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from celery_leader.record import printable
from celery_leader.urls import redact

from ...conf import SettingsError, leader_settings
from ...status import configured_alias, lease_rows


class Command(BaseCommand):
    help = "List the elections stored in the database with holder, token and time since renewal."

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
                f"cannot read the lease table of database {alias!r} ({type(exc).__name__}: {printable(exc)}); "
                f"run: python manage.py migrate django_leader --database {alias}"
            ) from exc
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2, sort_keys=True))
            return
        if not rows:
            self.stdout.write("no elections recorded")
            return
        header = f"{'NAME':<32} {'HOLDER':<36} {'TOKEN':>6} {'RENEWED':>10} {'LEASE':>7}  STATE"
        self.stdout.write(header)
        for row in rows:
            ago = "-" if row["renewed_seconds_ago"] is None else f"{row['renewed_seconds_ago']:.1f}s ago"
            token = "-" if row["token"] is None else str(row["token"])
            state = row["state"] + (f" ({row['error']})" if row.get("error") else "")
            holder = printable(row["holder"]) if row["holder"] else "(free)"
            self.stdout.write(
                f"{printable(row['name']):<32} {holder:<36} {token:>6} {ago:>10} "
                f"{row['lease_duration']:>6.1f}s  {state}"
            )
