"""Hostile lease rows and bad settings: the status view, the admin and ``leaderstatus``
never answer 500 or crash, and never print control characters or a password."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.test.utils import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_leader.record import LeaderRecord, encode_record
from django_leader.backend import DjangoBackend
from django_leader.status import line, row_record, row_status

HOSTILE = {
    "deep": b"[" * 5000,
    "huge-number": b'{"holderIdentity":"x","acquireTime":1' + b"0" * 400 + b"}",
    "infinity": b'{"holderIdentity":"x","leaderTransitions":Infinity}',
    "big": b'{"holderIdentity":"' + b"y" * (70 * 1024) + b'"}',
}
SETTINGS = {"URL": "django://default", "NAME": "tests", "LEASE_DURATION": 1.0, "RENEW_DEADLINE": 0.6, "RETRY_PERIOD": 0.2}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write(name: str, raw: bytes) -> None:
    backend = DjangoBackend.from_url("django://default")
    try:
        backend.lock(name).write_raw(raw)
    finally:
        backend.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), st.none(), st.integers()))
def test_row_decoding_never_raises(text) -> None:
    record = row_record(text)
    assert isinstance(record, LeaderRecord)
    row = row_status("x", text, 1)
    assert row["state"] in ("unreadable", "free", "held", "expired")
    json.dumps(row)
    assert "\x1b" not in line(row)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_rows_in_view_admin_and_leaderstatus(sqlite_alias, kind) -> None:
    name = unique(f"hostile-{kind}")
    write(name, HOSTILE[kind])
    client = Client(raise_request_exception=False)
    listing = client.get("/leader/")
    assert listing.status_code == 200
    row = {r["name"]: r for r in listing.json()["elections"]}[name]
    assert row["state"] == "unreadable"
    assert client.get(f"/leader/{name}/").status_code == 200

    out = io.StringIO()
    call_command("leaderstatus", stdout=out)
    assert name in out.getvalue()
    out = io.StringIO()
    call_command("leaderstatus", "--json", stdout=out)
    assert {r["name"]: r for r in json.loads(out.getvalue())}[name]["state"] == "unreadable"

    User.objects.filter(username="hostile-admin").delete()
    User.objects.create_superuser("hostile-admin", "a@example.com", "pw")
    client.login(username="hostile-admin", password="pw")
    assert client.get("/admin/django_leader/lease/").status_code == 200


def test_leaderstatus_escapes_a_holder_with_terminal_controls(sqlite_alias) -> None:
    name = unique("escape")
    evil = "evil\x1b[2J\x1b]0;owned\x07\nforged\u2028"
    write(name, encode_record(LeaderRecord(holder=evil, lease_duration=10, renew_time=1, transitions=2)))
    out = io.StringIO()
    call_command("leaderstatus", stdout=out)
    line = [ln for ln in out.getvalue().splitlines() if name in ln]
    assert len(line) == 1 and "evil\\x1b[2J" in line[0]
    assert not any(ch in out.getvalue() for ch in "\x1b\x07\u2028")


def test_status_view_permission_setting(sqlite_alias) -> None:
    client = Client(raise_request_exception=False)
    with override_settings(LEADER_ELECTION={**SETTINGS, "STATUS_PERMISSION": "django_leader.view_lease"}):
        assert client.get("/leader/").status_code == 403
        assert client.get("/leader/some-name/").status_code == 403
        User.objects.filter(username="viewer").delete()
        user = User.objects.create_user("viewer", password="pw")
        client.login(username="viewer", password="pw")
        assert client.get("/leader/").status_code == 403
        user.user_permissions.add(Permission.objects.get(codename="view_lease", content_type__app_label="django_leader"))
        assert client.get("/leader/").status_code == 200
    assert Client().get("/leader/").status_code == 200  # unset: open, as before


@pytest.mark.parametrize(
    "bad",
    [
        "not a dict",
        {"URL": 5},
        {"NO_SUCH_KEY": 1},
        {"LEASE_DURATION": "fifteen"},
        {"STATUS_PERMISSION": 5},
    ],
)
def test_status_view_with_invalid_settings_is_503_not_500(sqlite_alias, bad) -> None:
    client = Client(raise_request_exception=False)
    with override_settings(LEADER_ELECTION=bad):
        for path in ("/leader/", "/leader/x/"):
            answer = client.get(path)
            assert answer.status_code == 503, answer.content
            assert "LEADER_ELECTION" in answer.json()["error"]
        with pytest.raises(CommandError, match="LEADER_ELECTION"):
            call_command("leaderstatus", stdout=io.StringIO())


def test_leaderstatus_with_a_non_django_url_does_not_print_the_password(sqlite_alias) -> None:
    url = "redis://leader:s3cr/e?t#pw@127.0.0.1:6379/0"
    with override_settings(LEADER_ELECTION={**SETTINGS, "URL": url}):
        with pytest.raises(CommandError) as info:
            call_command("leaderstatus", stdout=io.StringIO())
    message = str(info.value)
    assert "not django://" in message
    for part in ("s3cr", "/e?t#pw", "e?t"):
        assert part not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://leader:Sup3r/Secr?t#Pw@rd@127.0.0.1:6379/0",
        "redis://leader:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1:6379/0?no_such_option=1",
        "s3://AKIAEXAMPLE:Sup3r%2FSecr%3Ft%23Pw%40rd@/prefix",
        "gossip://:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1:notaport?members=a",
        "leader:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1",
        "redis://leader:Sup3r%2FSecr%3Ft%23Pw%40rd@[::1/13",
    ],
)
def test_check_e001_does_not_show_the_password(url) -> None:
    from django_leader.checks import check_leader_settings

    with override_settings(LEADER_ELECTION={**SETTINGS, "URL": url}):
        errors = check_leader_settings()
    assert [e.id for e in errors] == ["django_leader.E001"], errors
    for piece in ("Sup3r", "Secr", "Pw@rd", "%2FSecr"):
        assert piece not in errors[0].msg and piece not in (errors[0].hint or "")


@pytest.mark.parametrize("db", ["sqlite", "pg", "maria"])
def test_a_huge_row_is_read_only_in_part_and_replaced(request, db) -> None:
    from celery_leader.testing import sample_record

    alias = request.getfixturevalue(f"{db}_alias")
    name = unique("huge")
    backend = DjangoBackend.from_url(f"django://{alias}")
    try:
        lock = backend.lock(name)
        lock.write_raw(b'{"holderIdentity":"' + b"x" * (3 * 1024 * 1024) + b'"}')
        got = lock.get(5.0)
        assert got is not None and "larger than" in got.record.decode_error
        lock.update(sample_record(transitions=1), got.version, 5.0)
        assert lock.get(5.0).record.decode_error is None
    finally:
        backend.close()
