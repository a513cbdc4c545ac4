"""What ``leaderstatus``, the status view and the admin show: the lease rows, judged as
``celery-leader status`` judges them.

A row and its fence row are read as the backend reads them
(:func:`celery_leader.backends.sql.versioned`: a deleted row whose fence remains is the
``(lease row deleted)`` placeholder, a token below the fence is lifted to it), then judged
by :func:`celery_leader.status.describe`: ``held``, ``expired``, ``free`` or
``unreadable``, the token, seconds since the holder's last renewal (its wall clock against
ours: a report, never a decision), the lease, and the last slot done by once-per-slot.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import urlsplit

from celery_leader.backends.sql import row_record, versioned
from celery_leader.record import MAX_RECORD_BYTES
from celery_leader.registry import url_scheme
from celery_leader.status import LockStatus, describe

from .conf import leader_settings

__all__ = ["configured_alias", "default_alias", "row_record", "row_status", "lease_rows", "line"]


def configured_alias() -> str | None:
    """The database of ``LEADER_ELECTION['URL']`` if it is django://, else ``None``."""
    url = leader_settings().url
    if url_scheme(url) != "django":
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.netloc or parts.path.strip("/") or "default"


def default_alias() -> str:
    return configured_alias() or "default"


def row_status(name: str, text: object, version: object, fence: int | None = None, now: float | None = None) -> dict[str, Any]:
    """One lease as a JSON-able dict: the fields of ``celery-leader status --json`` plus
    ``version``. Never raises, whatever the row holds.

    ``holder`` is the identity as stored (JSON and HTML escape it); terminals print
    :func:`line`, which escapes it.
    """
    got = versioned(text, version, fence)
    status = describe(name, got, now)
    return {**dataclasses.asdict(status), "version": got.version if got is not None else None}


def line(row: dict[str, Any]) -> str:
    """The CLI's human line for one :func:`row_status` dict (holder and slot escaped)."""
    fields = {f.name for f in dataclasses.fields(LockStatus)}
    return LockStatus(**{k: v for k, v in row.items() if k in fields}).line()


def lease_rows(alias: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Every election in database ``alias`` (or the one called ``name``): each lease row, and
    each fence row whose lease row was deleted (its holder may still be inside its lease)."""
    from django.db.models.functions import Substr

    from .models import Lease, LeaseFence

    db = alias or default_alias()
    leases = Lease.objects.using(db)
    fences = LeaseFence.objects.using(db)
    if name is not None:
        leases, fences = leases.filter(name=name), fences.filter(name=name)
    # as the backend reads it: at most MAX_RECORD_BYTES + 1 characters (longer is unreadable)
    text = Substr("record", 1, MAX_RECORD_BYTES + 1)
    rows = {n: (text, version) for n, text, version in leases.values_list("name", text, "version")}
    tokens = dict(fences.values_list("name", "token"))
    now = time.time()
    return [
        row_status(n, *rows.get(n, (None, None)), fence=tokens.get(n), now=now) for n in sorted(set(rows) | set(tokens))
    ]
