"""A read-only admin for leases: look, never edit (a hand edit could hand out a token twice)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Lease
from .status import describe


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ("name", "holder", "token", "renewed", "state", "version")
    search_fields = ("name", "holder")
    readonly_fields = ("name", "holder", "token", "version", "record")

    @admin.display(description="renewed")
    def renewed(self, obj: Lease) -> str:
        ago = describe(obj.name, obj.record, obj.version)["renewed_seconds_ago"]
        return "-" if ago is None else f"{ago:.1f} s ago"

    @admin.display(description="state")
    def state(self, obj: Lease) -> str:
        return describe(obj.name, obj.record, obj.version)["state"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
