"""System checks fire with the right ids; migrate and check start no election."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connections
from django.test.utils import override_settings

from celery_leader import election as election_module

from .conftest import subprocess_env


def ids(**kwargs) -> list[str]:
    return sorted(m.id for m in run_checks(**kwargs) if m.id and m.id.startswith("django_leader."))


GOOD = {"URL": "django://default", "LEASE_DURATION": 1.0, "RENEW_DEADLINE": 0.6, "RETRY_PERIOD": 0.2}


def test_good_settings_pass(sqlite_alias):
    with override_settings(LEADER_ELECTION=GOOD):
        assert ids() == []
        assert ids(databases=["default"]) == []


def test_defaults_pass_without_any_setting(sqlite_alias):
    with override_settings(LEADER_ELECTION=None):
        assert ids(databases=["default"]) == []


@pytest.mark.parametrize(
    "url",
    ["no-scheme-here", "nosuchscheme://x", "django://nosuchalias", "django://default?x=1", "django://memory"],
)
def test_bad_url_is_e001(url):
    with override_settings(LEADER_ELECTION={**GOOD, "URL": url}):
        messages = [m for m in run_checks() if m.id == "django_leader.E001"]
    assert len(messages) == 1, messages
    assert messages[0].hint


@pytest.mark.parametrize(
    "timing",
    [
        {"LEASE_DURATION": 5, "RENEW_DEADLINE": 10},  # renew_deadline above the lease
        {"RETRY_PERIOD": 0},
        {"RENEW_DEADLINE": 2.0, "RETRY_PERIOD": 2.0, "LEASE_DURATION": 15},  # no room to retry
    ],
)
def test_bad_timings_are_e002(timing):
    with override_settings(LEADER_ELECTION={**GOOD, **timing}):
        messages = [m for m in run_checks() if m.id == "django_leader.E002"]
    assert len(messages) == 1
    assert "renew_deadline" in messages[0].msg or "retry_period" in messages[0].msg


def test_missing_extra_is_e003(monkeypatch):
    # as if `pip install celery-leader[redis]` had not been run
    monkeypatch.delitem(sys.modules, "celery_leader.backends.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)
    with override_settings(LEADER_ELECTION={**GOOD, "URL": "redis://127.0.0.1:6379/0"}):
        messages = [m for m in run_checks() if m.id.startswith("django_leader.")]
    assert [m.id for m in messages] == ["django_leader.E003"]
    assert "pip install 'celery-leader[redis]'" in messages[0].msg


def test_unmigrated_database_is_e004_and_migrate_is_not_blocked():
    with override_settings(LEADER_ELECTION={**GOOD, "URL": "django://empty"}):
        assert ids() == [], "E004 is a database check: only with --database"
        messages = [m for m in run_checks(databases=["empty"]) if m.id == "django_leader.E004"]
        assert len(messages) == 1
        assert "migrate django_leader --database empty" in messages[0].hint
        try:
            call_command("migrate", "django_leader", "0001", database="empty", verbosity=0)  # half-way
            half = [m for m in run_checks(databases=["empty"]) if m.id == "django_leader.E004"]
            assert len(half) == 1 and "django_leader_leasefence" in half[0].msg
            call_command("migrate", "django_leader", database="empty", verbosity=0)  # runs the checks first
            assert ids(databases=["empty"]) == []
        finally:
            call_command("migrate", "django_leader", "zero", database="empty", verbosity=0)
            connections["empty"].close()


@pytest.mark.parametrize(
    "raw, key",
    [
        ([("URL", "x")], "must be a dict"),
        ({"URL": "django://", "LEASE": 3}, "unknown key"),
        ({"LEASE_DURATION": "15"}, "number"),
    ],
)
def test_malformed_settings_are_e005(raw, key):
    with override_settings(LEADER_ELECTION=raw):
        messages = [m for m in run_checks() if m.id and m.id.startswith("django_leader.")]
    assert [m.id for m in messages] == ["django_leader.E005"]
    assert key in messages[0].msg


@pytest.mark.parametrize("override", [{"NAME": "no spaces allowed"}, {"IDENTITY": "*"}])
def test_bad_name_or_identity_is_e006(override):
    with override_settings(LEADER_ELECTION={**GOOD, **override}):
        assert ids() == ["django_leader.E006"]


def test_check_and_migrate_start_no_election(sqlite_alias, monkeypatch):
    started: list[str] = []
    original = election_module.Election.start

    def spy(self):
        started.append(self.name)
        return original(self)

    monkeypatch.setattr(election_module.Election, "start", spy)
    before = {t.name for t in threading.enumerate()}
    call_command("check", verbosity=0)
    call_command("check", databases=["default"], verbosity=0)
    call_command("migrate", verbosity=0)
    new_threads = {t.name for t in threading.enumerate()} - before
    assert started == []
    assert not [n for n in new_threads if n.startswith("leader-")]


def test_manage_py_check_and_migrate_write_no_lease(sqlite_alias, tmp_path):
    from django_leader.models import Lease

    before = Lease.objects.using("default").count()
    for argv in (["check", "--database", "default"], ["migrate", "-v", "0"], ["leaderstatus"]):
        done = subprocess.run(
            [sys.executable, "-m", "django", *argv], env=subprocess_env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "started leading" not in done.stderr
    assert Lease.objects.using("default").count() == before


def test_shell_starts_no_election(sqlite_alias):
    code = (
        "import threading, django_leader.runner as r; "
        "print(sorted(t.name for t in threading.enumerate()), len(r.active_elections()))"
    )
    done = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['MainThread'] 0"


def test_models_and_migrations_agree():
    call_command("makemigrations", "django_leader", check=True, dry_run=True, verbosity=0)


def test_a_backend_that_is_not_partition_safe_is_w001():
    url = "redis+sentinel://:s3cret@127.0.0.1:1/mymaster/0"  # parsed only: nothing connects
    with override_settings(LEADER_ELECTION={**GOOD, "URL": url}):
        messages = [m for m in run_checks() if m.id and m.id.startswith("django_leader.")]
    assert [m.id for m in messages] == ["django_leader.W001"], messages
    assert "not partition-safe" in messages[0].msg and "s3cret" not in messages[0].msg
