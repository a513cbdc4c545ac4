"""The django:// backend beyond the contract: configuration errors, a server going away,
versions after a deleted row, elections on each database, status view, admin, leaderstatus."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client

from celery_leader import Election
from celery_leader.backends.sql import VANISHED_HOLDER
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend
from celery_leader.testing import sample_record
from django_leader.backend import DjangoBackend
from django_leader.models import Lease

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- configuration ---------------------------------------------------------------------


def test_registry_opens_the_default_alias():
    backend = open_backend("django://")
    try:
        assert isinstance(backend, DjangoBackend) and backend.alias == "default"
        assert backend.describe() == "django://default"
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("django://nosuch", "settings.DATABASES"),
        ("django://default?timeout=3", "django:// takes no options"),
        ("django://user:pw@default", "only a database alias"),
        ("django://memory", "in-memory SQLite"),
    ],
)
def test_bad_urls_name_the_fix(url, words):
    with pytest.raises(ConfigurationError, match=words):
        DjangoBackend.from_url(url)


def test_missing_table_is_a_configuration_error_naming_migrate():
    backend = DjangoBackend.from_url("django://empty")
    try:
        with pytest.raises(ConfigurationError, match="migrate django_leader --database empty"):
            backend.check()
        with pytest.raises(ConfigurationError, match="migrate django_leader"):
            backend.lock("x").get(2.0)
    finally:
        backend.close()


def test_versions_are_not_reused_after_the_row_is_deleted(alias):
    backend = DjangoBackend.from_url(f"django://{alias}")
    name = unique("deleted")
    try:
        lock = backend.lock(name)
        v1 = lock.create(sample_record(transitions=1), 5.0)
        v2 = lock.update(sample_record(transitions=2), v1, 5.0)
        Lease.objects.using(alias).filter(name=name).delete()  # by hand
        v3 = lock.create(sample_record(transitions=3), 5.0)
        assert int(v3) > int(v2) > int(v1)
        for stale in (v1, v2):
            with pytest.raises(Conflict):
                lock.update(sample_record(holder="stale"), stale, 5.0)
        row = Lease.objects.using(alias).get(name=name)
        assert (row.holder, row.token) == ("candidate-a", 3)
    finally:
        backend.close()


def test_tokens_continue_above_the_fence_after_the_row_is_deleted(alias):
    name = unique("fenced")
    url = f"django://{alias}"
    with Election(name, url=url, identity="first", **FAST) as first:
        assert first.wait_until_leader(20)
        token = first.token
    Lease.objects.using(alias).filter(name=name).delete()  # by hand; the fence stays
    backend = DjangoBackend.from_url(url)
    try:
        got = backend.lock(name).get(5.0)
        # as on postgresql://: held by nobody we know, for one lease, at the fence's token
        assert got is not None and got.record.holder == VANISHED_HOLDER and not got.record.is_free
        assert got.record.transitions == token and got.version == f"absent:{token}"
        with Election(name, url=url, identity="second", **FAST) as second:
            assert second.wait_until_leader(20)
            assert second.token == token + 1
        Lease.objects.using(alias).filter(name=name).delete()
        with pytest.raises(Conflict, match="fence"):  # a candidate that never read the fence
            backend.lock(name).create(sample_record(transitions=1), 5.0)
        assert backend.lock(name).get(5.0).version == f"absent:{token + 1}"
    finally:
        backend.close()


def test_a_deleted_row_is_waited_out_even_by_a_candidate_that_never_saw_it(alias):
    """Leader A wrote its record (a live lease) and then froze; the row is deleted by hand.

    B, a new backend object that never saw A's record, must not start a term before A's
    lease could have ended: A may still believe it leads until its last write's send time
    plus the lease, and that write returned before ``written``. Then tokens keep rising.
    (The old reading, a deleted row as free, let B lead at once.)
    """
    name = unique("vanished")
    url = f"django://{alias}"
    frozen = DjangoBackend.from_url(url)
    try:
        record = sample_record(holder="a", transitions=7).evolve(lease_duration=FAST["lease_duration"], renew_time=time.time())
        frozen.lock(name).create(record, 5.0)
        written = time.monotonic()
        Lease.objects.using(alias).filter(name=name).delete()  # by hand; the fence stays
    finally:
        frozen.close()
    started: list[float] = []
    leaders: list[str] = []
    b = Election(
        name,
        url=url,
        identity="b",
        on_started_leading=lambda *_: started.append(time.monotonic()),
        on_new_leader=leaders.append,
        **FAST,
    )
    with b:
        assert b.wait_until_leader(20)
        assert started, "on_started_leading did not run"
        assert started[0] >= written + FAST["lease_duration"], (
            f"B led {started[0] - written:.3f} s after A's last write, inside A's {FAST['lease_duration']} s lease"
        )
        assert VANISHED_HOLDER in leaders and b.token == 8
        b.stop()  # released: the row stays, free, at token 8
    Lease.objects.using(alias).filter(name=name).delete()
    with Election(name, url=url, identity="c", **FAST) as c:
        assert c.wait_until_leader(20)
        assert c.token == 9


def test_a_lower_token_written_by_a_foreign_writer_is_lifted_to_the_fence(alias):
    backend = DjangoBackend.from_url(f"django://{alias}")
    name = unique("lifted")
    try:
        version = backend.lock(name).create(sample_record(transitions=5), 5.0)
        backend.lock(name).write_raw(
            b'{"holderIdentity":"go","leaseDurationMilliSeconds":1000,"acquireTime":0,"renewTime":0,"leaderTransitions":2}'
        )
        got = backend.lock(name).get(5.0)
        assert got.record.holder == "go" and got.record.transitions == 5
        assert got.version != version
    finally:
        backend.close()


def test_over_garbage_a_token_below_the_fence_is_refused_with_the_fix(alias):
    backend = DjangoBackend.from_url(f"django://{alias}")
    name = unique("garbage-fence")
    try:
        backend.lock(name).create(sample_record(transitions=5), 5.0)
        backend.lock(name).write_raw(b"not a record")
        fresh = DjangoBackend.from_url(f"django://{alias}")
        try:
            lock = fresh.lock(name)
            got = lock.get(5.0)
            assert got.record.decode_error
            with pytest.raises(
                BackendUnavailable, match="refused to write fencing token 1.*delete that django_leader_lease row"
            ):
                lock.update(sample_record(transitions=1), got.version, 5.0)
            assert lock.get(5.0).version == got.version, "nothing was written"
            lock.update(sample_record(transitions=6), got.version, 5.0)
            assert lock.get(5.0).record.transitions == 6
        finally:
            fresh.close()
    finally:
        backend.close()


def _terminate_other_sessions(alias: str) -> int:
    """Kill the database's other sessions and wait until they are gone (killing is asynchronous)."""
    if connections[alias].vendor == "postgresql":
        others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        kill = "SELECT pg_terminate_backend({})"
    else:
        others = "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
        kill = "KILL {}"
    with connections[alias].cursor() as cur:
        cur.execute(others)
        ids = [int(row[0]) for row in cur.fetchall()]
        for session in ids:
            cur.execute(kill.format(session))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cur.execute(others)
            if not {int(row[0]) for row in cur.fetchall()} & set(ids):
                break
            time.sleep(0.02)
    return len(ids)


@pytest.mark.parametrize("server", ["pg", "maria"])
def test_server_dropping_idle_connections_costs_no_failed_call(server, request):
    alias = request.getfixturevalue(f"{server}_alias")
    backend = DjangoBackend.from_url(f"django://{alias}")
    lock = backend.lock(unique("killed"))
    try:
        version = lock.create(sample_record(), 5.0)
        assert _terminate_other_sessions(alias) >= 1  # the server drops the pooled session
        got = lock.get(2.0)  # noticed, reconnected, answered
        assert got is not None and got.version == version
        _terminate_other_sessions(alias)
        new = lock.update(sample_record(holder="after-kill"), version, 2.0)
        assert lock.get(2.0).version == new
    finally:
        backend.close()
        connections[alias].close()


def test_unreachable_server_is_unavailable_within_the_timeout():
    backend = DjangoBackend.from_url("django://gone")
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="django://gone"):
                backend.lock("x").get(1.0)
            assert time.monotonic() - started < 10.0  # bounded by the timeout (1 s), not hanging
    finally:
        backend.close()


def test_many_threads_share_one_backend(alias):
    backend = DjangoBackend.from_url(f"django://{alias}")
    name = unique("threads")
    lock = backend.lock(name)
    version = lock.create(sample_record(transitions=0), 5.0)
    errors: list[BaseException] = []
    wins: list[int] = []

    def renew(i: int) -> None:
        try:
            got = lock.get(5.0)
            lock.update(sample_record(holder=f"t{i}", transitions=got.record.transitions + 1), got.version, 5.0)
            wins.append(i)
        except Conflict:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=renew, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    backend.close()
    assert not errors
    assert len(wins) >= 1
    assert version


# --- elections -------------------------------------------------------------------------


def test_election_handover_on_each_database(alias):
    name = unique("election")
    a = Election(name, url=f"django://{alias}", identity="a", **FAST)
    b = Election(name, url=f"django://{alias}", identity="b", **FAST)
    with a:
        assert a.wait_until_leader(20)
        first = a.token
        b.start()
        try:
            time.sleep(0.5)
            assert not b.is_leader and b.leader == "a"
            a.stop()  # releases: b takes over without waiting for the lease
            assert b.wait_until_leader(20)
            assert b.token > first
        finally:
            b.stop()


def test_on_postgresql_a_release_is_notified_not_polled(pg_alias):
    """With a 60 s lease and a 30 s poll, only the NOTIFY of the release can wake the follower in time."""
    name = unique("notified")
    slow = dict(lease_duration=60.0, renew_deadline=40.0, retry_period=30.0)
    backend = DjangoBackend.from_url(f"django://{pg_alias}")
    assert type(backend.lock(name)).capabilities.watch
    backend.close()
    a = Election(name, url=f"django://{pg_alias}", identity="a", **slow)
    b = Election(name, url=f"django://{pg_alias}", identity="b", **slow)
    with a:
        assert a.wait_until_leader(20)
        b.start()
        try:
            deadline = time.monotonic() + 20
            while b.leader != "a" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert b.leader == "a" and not b.is_leader  # b now waits on LISTEN
            a.stop()
            assert b.wait_until_leader(20), "the follower was not woken by the release's NOTIFY"
        finally:
            b.stop()


# --- status, admin, leaderstatus, leader_only ------------------------------------------


def test_leaderstatus_status_view_and_admin(sqlite_alias):
    name = unique("status")
    with Election(name, url="django://default", identity="status-holder", **FAST) as e:
        assert e.wait_until_leader(20)
        out = io.StringIO()
        call_command("leaderstatus", "--json", stdout=out)
        rows = {row["name"]: row for row in json.loads(out.getvalue())}
        assert rows[name]["holder"] == "status-holder" and rows[name]["state"] == "held"
        assert rows[name]["token"] == e.token
        text = io.StringIO()
        call_command("leaderstatus", stdout=text)
        assert name in text.getvalue() and "status-holder" in text.getvalue()

        client = Client()
        body = client.get("/leader/").json()
        assert any(r["name"] == name and r["holder"] == "status-holder" for r in body["elections"])
        one = client.get(f"/leader/{name}/")
        assert one.status_code == 200 and one.json()["election"]["token"] == e.token
        assert client.get(f"/leader/{name}/?leader=1").status_code == 503  # this process runs no django_leader election
        assert client.get("/leader/no-such-election/").status_code == 404

        from django_leader.runner import election

        local = election(unique("local"), identity="this-process")
        with local:
            assert local.wait_until_leader(20)
            probe = client.get(f"/leader/{local.name}/?leader=1")
            assert probe.status_code == 200, probe.content
            assert probe.json()["local"] == [
                {
                    "name": local.name,
                    "identity": "this-process",
                    "leading": True,
                    "leader": "this-process",
                    "token": local.token,
                }
            ]

        User.objects.filter(username="admin").delete()
        User.objects.create_superuser("admin", "a@example.com", "pw")
        client.login(username="admin", password="pw")
        listing = client.get("/admin/django_leader/lease/")
        assert listing.status_code == 200 and name in listing.content.decode()
        assert client.get("/admin/django_leader/lease/add/").status_code == 403
        pk = Lease.objects.get(name=name).pk
        assert client.post(f"/admin/django_leader/lease/{pk}/delete/", {"post": "yes"}).status_code == 403
        assert Lease.objects.filter(name=name).exists()


def test_garbage_row_shows_as_unreadable(sqlite_alias):
    name = unique("garbage")
    backend = DjangoBackend.from_url("django://default")
    backend.lock(name).write_raw(b"\x00not json")
    backend.close()
    out = io.StringIO()
    call_command("leaderstatus", "--json", stdout=out)
    row = {r["name"]: r for r in json.loads(out.getvalue())}[name]
    assert row["state"] == "unreadable" and "not JSON" in row["note"] and row["holder"] is None


def test_leader_only_runs_in_process_and_skips_when_another_leads(sqlite_alias):
    out = io.StringIO()
    call_command("guarded", stdout=out)
    assert "ran with token" in out.getvalue()
    with Election("tests.guarded", url="django://default", identity="elsewhere", **FAST) as other:
        assert other.wait_until_leader(20)
        out, err = io.StringIO(), io.StringIO()
        call_command("guarded", stdout=out, stderr=err)
        assert out.getvalue() == ""
        assert "skipped: elsewhere is active" in err.getvalue()


def test_leader_only_once_per_runs_once_per_slot(sqlite_alias, monkeypatch):
    from celery_leader.once import Slot

    # the command's slot comes from a pinned clock, not the wall clock: both calls fall in the
    # same hourly slot, and that slot ends more than an hour from now (it cannot turn mid-test)
    pinned = time.time() + 3600

    class PinnedSlot(Slot):
        @classmethod
        def every(cls, period, now=None):
            return Slot.every(period, now=pinned)

    monkeypatch.setattr("django_leader.runner.Slot", PinnedSlot)
    first, second = io.StringIO(), io.StringIO()
    call_command("hourly", stdout=first)
    call_command("hourly", stdout=second, stderr=io.StringIO())
    assert first.getvalue().strip() == "ran" and second.getvalue() == ""
    # the next slot of the same period runs again
    pinned += 3600
    third = io.StringIO()
    call_command("hourly", stdout=third)
    assert third.getvalue().strip() == "ran"


def test_leader_only_refuses_a_bad_period_at_import():
    from django_leader import leader_only

    with pytest.raises(ConfigurationError, match="not a duration"):
        leader_only(once_per="hourly")


def test_status_with_leases_elsewhere_or_no_table(sqlite_alias):
    from django.core.management.base import CommandError
    from django.test.utils import override_settings

    client = Client()
    with override_settings(LEADER_ELECTION={"URL": "redis://127.0.0.1:6379/0"}):
        answer = client.get("/leader/")
        assert answer.status_code == 200 and answer.json()["elections"] == []
        with pytest.raises(CommandError, match="celery-leader status --url redis://"):
            call_command("leaderstatus")
    with override_settings(LEADER_ELECTION={"URL": "django://empty"}):
        answer = client.get("/leader/")
        assert answer.status_code == 503 and "lease table" in answer.json()["error"]
        with pytest.raises(CommandError, match="migrate django_leader --database empty"):
            call_command("leaderstatus")


def test_loss_interrupts_leader_only_code_running_in_a_worker_thread():
    from django.test.utils import override_settings

    from celery_leader.backends.memory import MemoryBackend
    from django_leader.runner import LeadershipLost, run_as_leader

    url = f"memory://{uuid.uuid4().hex}"
    outcome: dict[str, object] = {}
    running = threading.Event()

    def job() -> None:
        running.set()
        while True:  # pure Python: the asynchronous exception lands between two instructions
            time.sleep(0.01)

    def worker() -> None:
        try:
            run_as_leader(job, name="thread-job", hard_stop=False)
        except LeadershipLost as exc:
            outcome["lost"] = exc
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["other"] = exc

    settings = {"URL": url, "LEASE_DURATION": 1.0, "RENEW_DEADLINE": 0.6, "RETRY_PERIOD": 0.2}
    with override_settings(LEADER_ELECTION=settings):
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        assert running.wait(10), outcome
        with MemoryBackend.from_url(url).stalled():  # renewals hang past RENEW_DEADLINE
            deadline = time.monotonic() + 10
            while "lost" not in outcome and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.05)
        thread.join(15)
    assert not thread.is_alive()
    assert isinstance(outcome.get("lost"), LeadershipLost), outcome
