"""``leaderstatus``, the status view and the admin judge a lease as ``celery-leader status``
does (one function, :func:`celery_leader.status.describe`): held / expired / free /
unreadable, the token, renewal against the lease, the last slot of once-per-slot; a row
deleted by hand shows as the vanished placeholder, not as missing; nothing secret or
unescaped is printed."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError
from django.test import Client

from celery_leader.backends.sql import VANISHED_HOLDER
from celery_leader.once import LAST_SLOT_KEY
from celery_leader.record import LeaderRecord, encode_record
from celery_leader.status import VANISHED_HOLDERS
from django_leader.backend import DjangoBackend
from django_leader.models import Lease

from .conftest import subprocess_env

#: fields that depend on when they were computed
MOVING = {"renewed_seconds_ago"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write(name: str, record: LeaderRecord | bytes) -> None:
    backend = DjangoBackend.from_url("django://default")
    try:
        backend.lock(name).write_raw(record if isinstance(record, bytes) else encode_record(record))
    finally:
        backend.close()


def leaderstatus(*args: str) -> str:
    out = io.StringIO()
    call_command("leaderstatus", *args, stdout=out)
    return out.getvalue()


def json_row(name: str) -> dict:
    return {r["name"]: r for r in json.loads(leaderstatus("--json"))}[name]


def text_line(name: str) -> str:
    lines = [ln for ln in leaderstatus().splitlines() if ln.startswith(f"{name}: ")]
    assert len(lines) == 1, lines
    return lines[0]


def cli_status(name: str) -> dict:
    """What ``celery-leader status --json`` says about ``name`` in the same database."""
    out = subprocess.run(
        [sys.executable, "-m", "celery_leader", "status", "--url", "django://default", "--name", name, "--json"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def without(row: dict, keys: set[str]) -> dict:
    return {k: v for k, v in row.items() if k not in keys}


def test_held_expired_and_last_slot_match_the_cli(sqlite_alias) -> None:
    held, expired = unique("held"), unique("expired")
    now = time.time()
    # held for an hour: no slow machine turns it "expired" before the CLI subprocess judges it
    write(held, LeaderRecord(holder="h", lease_duration=3600, renew_time=now, transitions=4, extra={LAST_SLOT_KEY: "2026-11-29"}))
    write(expired, LeaderRecord(holder="gone", lease_duration=1, renew_time=now - 100, transitions=9))

    row = json_row(held)
    judged_by = time.time()
    assert (row["state"], row["holder"], row["token"], row["lease_duration"]) == ("held", "h", 4, 3600)
    assert row["last_slot"] == "2026-11-29" and row["judged"] == "wall clock" and row["exists"] is True
    # the time since the record's own renew_time, judged between the write and now (ms rounding)
    assert 0 <= row["renewed_seconds_ago"] <= judged_by - now + 0.0005, (row["renewed_seconds_ago"], judged_by - now)
    # the same judgement as the CLI, field for field (the CLI has no row version)
    assert without(cli_status(held), MOVING) == without(row, MOVING | {"version"})
    line = text_line(held)
    assert "held by h (token 4), renewed" in line and "lease 3600 s" in line and "last slot done: 2026-11-29" in line

    row = json_row(expired)
    assert (row["state"], row["holder"], row["token"]) == ("expired", "gone", 9)
    assert row["renewed_seconds_ago"] >= 100
    assert without(cli_status(expired), MOVING) == without(row, MOVING | {"version"})
    assert "expired: gone (token 9) stopped renewing" in text_line(expired)

    client = Client()
    listing = {r["name"]: r for r in client.get("/leader/").json()["elections"]}
    assert listing[held]["state"] == "held" and listing[held]["last_slot"] == "2026-11-29"
    assert listing[expired]["state"] == "expired"
    one = client.get(f"/leader/{expired}/").json()["election"]
    assert without(one, MOVING) == without(row, MOVING)

    User.objects.filter(username="status-admin").delete()
    User.objects.create_superuser("status-admin", "a@example.com", "pw")
    client.login(username="status-admin", password="pw")
    page = client.get("/admin/django_leader/lease/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "2026-11-29" in html and "expired" in html and "lease 3600 s" in html


def test_a_deleted_row_shows_as_vanished_not_missing(sqlite_alias) -> None:
    name = unique("deleted")
    backend = DjangoBackend.from_url("django://default")
    try:
        backend.lock(name).create(LeaderRecord(holder="a", lease_duration=1, renew_time=time.time(), transitions=5), 5.0)
    finally:
        backend.close()
    Lease.objects.filter(name=name).delete()  # by hand; the fence stays
    assert VANISHED_HOLDER in VANISHED_HOLDERS
    row = json_row(name)
    assert (row["state"], row["holder"], row["token"], row["exists"]) == ("free", None, 5, False)
    assert "vanished" in row["note"] and "wait one lease" in row["note"] and row["version"] == "absent:5"
    assert without(cli_status(name), MOVING) == without(row, MOVING | {"version"})
    assert "free (last token 5)" in text_line(name)
    answer = Client().get(f"/leader/{name}/")  # known by its fence: not 404
    assert answer.status_code == 200 and answer.json()["election"]["token"] == 5


def test_a_token_below_the_fence_is_shown_at_the_fence(sqlite_alias) -> None:
    name = unique("lifted")
    backend = DjangoBackend.from_url("django://default")
    try:
        backend.lock(name).create(LeaderRecord(holder="a", lease_duration=15, renew_time=time.time(), transitions=6), 5.0)
    finally:
        backend.close()
    write(name, LeaderRecord(holder="hand", lease_duration=15, renew_time=time.time(), transitions=2))
    assert json_row(name)["token"] == 6  # what the next term counts from, as the backend reads it


def test_escapes_holder_and_slot_and_never_crashes_on_garbage(sqlite_alias) -> None:
    name, garbage = unique("escape"), unique("garbage")
    write(
        name,
        LeaderRecord(
            holder="evil\x1b[2J\n", lease_duration=15, renew_time=time.time(), transitions=2,
            extra={LAST_SLOT_KEY: "slot\x1b]0;owned\x07"},
        ),
    )  # fmt: skip
    write(garbage, b'{"holderIdentity": "x", "renewTime": "soon"')
    text = leaderstatus()
    assert not any(ch in text for ch in "\x1b\x07")
    line = text_line(name)
    assert "evil\\x1b[2J\\n" in line and "slot\\x1b]0;owned\\x07" in line
    assert text_line(garbage).startswith(f"{garbage}: unreadable")
    assert json_row(garbage)["state"] == "unreadable"
    assert Client().get(f"/leader/{garbage}/").json()["election"]["state"] == "unreadable"


def test_a_database_error_never_shows_a_password(sqlite_alias, monkeypatch, caplog) -> None:
    """A driver message that quotes a connection URL (some do) is redacted everywhere."""
    secret = "Sup3r-s3cret"

    def broken(*args: object, **kw: object) -> list:
        raise DatabaseError(f"could not connect to postgresql://leader:{secret}@127.0.0.1:5432/db")

    monkeypatch.setattr("django_leader.status.lease_rows", broken)
    monkeypatch.setattr("django_leader.views.lease_rows", broken)
    monkeypatch.setattr("django_leader.management.commands.leaderstatus.lease_rows", broken)
    with pytest.raises(CommandError) as info:
        leaderstatus()
    assert secret not in str(info.value) and "***" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="celery_leader"):
        answer = Client().get("/leader/")
    assert answer.status_code == 503 and secret not in answer.content.decode()
    assert caplog.records and not any(secret in r.getMessage() for r in caplog.records)
