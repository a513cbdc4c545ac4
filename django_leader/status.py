"""What the status command, view and admin show: the lease rows, decoded."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from celery_leader.record import LeaderRecord, decode_or_placeholder
from celery_leader.registry import url_scheme

from .conf import leader_settings


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


def row_record(text: object) -> LeaderRecord:
    """The record in a lease row's text column; never raises (a placeholder for garbage).

    Drivers hand back ``str``, or ``bytes``/``memoryview`` for binary collations.
    """
    if isinstance(text, memoryview):
        text = text.tobytes()
    if not isinstance(text, (str, bytes, bytearray)):
        text = "" if text is None else str(text)
    return decode_or_placeholder(bytes(text) if isinstance(text, bytearray) else text)


def describe(name: str, text: str, version: int, now: float | None = None) -> dict[str, Any]:
    """One lease as a JSON-able dict. ``state`` is a wall-clock estimate: held, expired?, free, garbage.

    ``holder`` is the identity as stored (JSON and HTML escape it); terminals print
    :func:`celery_leader.record.printable` of it.
    """
    now = time.time() if now is None else now
    record = row_record(text)
    if record.decode_error:
        return {
            "name": name, "holder": None, "token": None, "renewed_seconds_ago": None, "lease_duration": 0.0,
            "state": "garbage", "error": record.decode_error, "version": str(version),
        }  # fmt: skip
    ago = round(now - record.renew_time, 3) if record.renew_time else None
    if not record.holder:
        state = "free"
    elif ago is not None and ago > record.lease_duration:
        state = "expired?"
    else:
        state = "held"
    return {
        "name": name,
        "holder": record.holder,
        "token": record.transitions,
        "renewed_seconds_ago": ago,
        "lease_duration": record.lease_duration,
        "state": state,
        "version": str(version),
    }


def lease_rows(alias: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Every lease (or the one called ``name``) in database ``alias``."""
    from .models import Lease

    query = Lease.objects.using(alias or default_alias()).order_by("name")
    if name is not None:
        query = query.filter(name=name)
    now = time.time()
    return [describe(n, text, version, now) for n, text, version in query.values_list("name", "record", "version")]
