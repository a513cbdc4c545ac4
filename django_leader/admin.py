"""A read-only admin for leases: look, never edit (a hand edit could hand out a token twice).

The state, renewal and last slot columns use the judgement of ``celery-leader status``
(:func:`django_leader.status.row_status`); the admin's templates escape the holder.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Lease
from .status import row_status


def _status(obj: Lease) -> dict[str, Any]:
    return row_status(obj.name, obj.record, obj.version)


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ("name", "holder", "token", "renewed", "state", "last_slot", "version")
    search_fields = ("name", "holder")
    readonly_fields = ("name", "holder", "token", "version", "record")

    @admin.display(description="renewed")
    def renewed(self, obj: Lease) -> str:
        row = _status(obj)
        ago = row["renewed_seconds_ago"]
        if ago is None:
            return "-"
        return f"{ago:.1f} s ago, lease {row['lease_duration']:g} s"

    @admin.display(description="state")
    def state(self, obj: Lease) -> str:
        row = _status(obj)
        return row["state"] + (f" ({row['note']})" if row["note"] else "")

    @admin.display(description="last slot done")
    def last_slot(self, obj: Lease) -> str:
        return _status(obj)["last_slot"] or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
