"""postgresql:// beyond the contract: URLs and secrets, tables and permissions, a deleted
row, garbage, a hung server, killed sessions, NOTIFY handover between electors."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Any

import pytest

from celery_leader import Election
from celery_leader.backends.postgresql import DEFAULT_TABLE, VANISHED_HOLDER, PostgresBackend, PostgresLock
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend as registry_open
from celery_leader.testing import sample_record

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
#: a follower with these can only take over quickly if a notification wakes it
SLOW = dict(lease_duration=60.0, renew_deadline=40.0, retry_period=30.0)
SECRET = "s3cr3t-Pa55/word"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- URLs, registry, secrets -----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_registry_opens_both_schemes(scheme, pg_database):
    backend = registry_open(f"{scheme}://postgres@127.0.0.1:5432/{pg_database}?table=cl_reg")
    try:
        assert isinstance(backend, PostgresBackend) and backend.table == "cl_reg"
        backend.check(5.0)
        assert backend.lock("x").get(5.0) is None
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/db?tabel=x", "unknown postgresql:// option ?tabel="),
        ("postgresql://postgres@127.0.0.1:5432/db?table=a;drop", "?table= must be NAME or SCHEMA.NAME"),
        ("postgresql://postgres@127.0.0.1:5432/db?table=a.b.c", "?table= must be NAME or SCHEMA.NAME"),
        ("postgresql://postgres@127.0.0.1:5432/db?connect_timeout=soon", "?connect_timeout= must be"),
        ("postgresql://postgres@127.0.0.1:port/db", "cannot read"),
        ("postgresql://postgres@127.0.0.1/db#frag", "no #fragment"),
    ],
)
def test_bad_urls_name_the_fix(url, words):
    with pytest.raises(ConfigurationError, match=words.replace("?", r"\?")) as info:
        PostgresBackend.from_url(url)
    assert "Traceback" not in str(info.value)


def test_connect_timeout_from_the_url_reaches_libpq():
    backend = PostgresBackend.from_url("postgresql://postgres@127.0.0.1:5432/db?connect_timeout=7.5")
    try:
        assert backend._conninfo["connect_timeout"] == "8"
    finally:
        backend.close()


def test_password_is_never_shown(proxy, pg_database):
    url = f"postgresql://postgres:{SECRET.replace('/', '%2F')}@127.0.0.1:{proxy.port}/{pg_database}?sslpassword=also-secret"
    backend = PostgresBackend.from_url(url)
    try:
        shown = [backend.describe(), backend.lock("x").describe()]
        proxy.set_mode("blackhole")
        with pytest.raises(BackendUnavailable) as info:
            backend.lock("x").get(0.5)
        shown.append(str(info.value))
        with pytest.raises(ConfigurationError) as bad:
            PostgresBackend.from_url(url.replace("sslpassword", "sslpasword"))
        shown.append(str(bad.value))
    finally:
        backend.close()
    for text in shown:
        assert "s3cr3t" not in text and "Pa55" not in text and "also-secret" not in text, text
        assert "***@" in text or "lease" in text or "option" in text


# --- tables and permissions ------------------------------------------------------------


def test_tables_are_created_on_first_use_with_the_documented_columns(pg_url, db, open_backend):
    table = unique("cl_created").replace("-", "_")
    backend = open_backend(f"{pg_url}?table={table}")
    assert db.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is None
    backend.lock("a").create(sample_record(), 5.0)
    columns = {row[0] for row in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table])}
    assert columns == {"name", "record", "version", "holder", "token"}
    assert db.execute("SELECT token FROM " + f'"{table}_fence"').fetchone()[0] == 3


def test_role_without_create_gets_the_grant_to_run(make_role, pg_database, open_backend):
    role = make_role()
    backend = open_backend(f"postgresql://{role}@127.0.0.1:5432/{pg_database}?table=cl_nocreate")
    with pytest.raises(ConfigurationError, match=rf'GRANT CREATE ON SCHEMA public TO "{role}".*docs/postgresql.md'):
        backend.check(5.0)
    with pytest.raises(ConfigurationError, match="GRANT CREATE"):
        backend.lock("x").get(5.0)  # the same at runtime, not a retried "unavailable"


def test_role_without_update_gets_the_grant_to_run(make_role, pg_url, pg_database, db, open_backend):
    open_backend(f"{pg_url}?table=cl_readonly").check(5.0)  # created by the owner
    role = make_role()
    db.execute(f'GRANT SELECT ON cl_readonly, cl_readonly_fence TO "{role}"')
    backend = open_backend(f"postgresql://{role}@127.0.0.1:5432/{pg_database}?table=cl_readonly")
    with pytest.raises(ConfigurationError, match=rf'GRANT SELECT, INSERT, UPDATE ON "cl_readonly", "cl_readonly_fence" TO "{role}"'):
        backend.check(5.0)
    # granted by the owner: the same backend object works now
    db.execute(f'GRANT SELECT, INSERT, UPDATE ON cl_readonly, cl_readonly_fence TO "{role}"')
    backend.lock("x").create(sample_record(), 5.0)


def test_a_revoked_update_at_runtime_is_a_configuration_error(make_role, pg_url, pg_database, db, open_backend):
    open_backend(f"{pg_url}?table=cl_revoked").check(5.0)
    role = make_role()
    db.execute(f'GRANT SELECT, INSERT, UPDATE ON cl_revoked, cl_revoked_fence TO "{role}"')
    lock = open_backend(f"postgresql://{role}@127.0.0.1:5432/{pg_database}?table=cl_revoked").lock("x")
    version = lock.create(sample_record(), 5.0)
    db.execute(f'REVOKE UPDATE ON cl_revoked FROM "{role}"')
    with pytest.raises(ConfigurationError, match="GRANT SELECT, INSERT, UPDATE ON"):
        lock.update(sample_record(), version, 5.0)


def test_missing_database_or_role_is_a_configuration_error(pg_database, open_backend):
    with pytest.raises(ConfigurationError, match="cannot log in"):
        open_backend("postgresql://postgres@127.0.0.1:5432/no_such_db_celery_leader").check(5.0)
    with pytest.raises(ConfigurationError, match="cannot log in"):
        open_backend(f"postgresql://no_such_role_cl@127.0.0.1:5432/{pg_database}").check(5.0)


# --- deleted rows, garbage, fence --------------------------------------------------------


def test_a_deleted_row_reads_held_and_the_token_keeps_rising(pg_url, db):
    name = unique("deleted")
    with Election(name, url=pg_url, identity="first", **FAST) as first:
        assert first.wait_until_leader(20)
        token = first.token
    db.execute(f"DELETE FROM {DEFAULT_TABLE} WHERE name = %s", [name])  # by hand; the fence stays
    backend = PostgresBackend.from_url(pg_url)
    try:
        got = backend.lock(name).get(5.0)
        # whoever held it may still believe it leads: held by nobody we know, for one lease
        assert got.record.holder == VANISHED_HOLDER and got.version == f"absent:{token}"
        with pytest.raises(Conflict, match="fence"):  # a candidate that never read the fence
            backend.lock(name).create(sample_record(transitions=1), 5.0)
        with Election(name, url=pg_url, identity="second", **FAST) as second:
            assert second.wait_until_leader(20)
            assert second.token == token + 1
        db.execute(f"DELETE FROM {DEFAULT_TABLE} WHERE name = %s", [name])
        with Election(name, url=pg_url, identity="third", **FAST) as third:
            assert third.wait_until_leader(20)
            assert third.token == token + 2
    finally:
        backend.close()


def test_garbage_in_the_record_column_is_a_placeholder_then_replaced(pg_url, db):
    name = unique("garbage")
    backend = PostgresBackend.from_url(pg_url)
    try:
        backend.lock(name).create(sample_record(transitions=5), 5.0)
        db.execute(f"UPDATE {DEFAULT_TABLE} SET record = %s, version = version + 1 WHERE name = %s", ["{\"holderIdentity\": [", name])
        got = backend.lock(name).get(5.0)
        assert got.record.decode_error and not got.record.is_free
        with Election(name, url=pg_url, identity="after-garbage", **FAST) as election:
            assert election.wait_until_leader(20)
            token = election.token
            assert token > 5  # the fence, not the unreadable record, sets the floor
        record = json.loads(db.execute(f"SELECT record FROM {DEFAULT_TABLE} WHERE name = %s", [name]).fetchone()[0])
        assert record["leaderTransitions"] == token and record["holderIdentity"] == ""  # released
    finally:
        backend.close()


def test_a_new_term_never_reuses_the_fence_token(pg_url, open_backend):
    """Equal to the fence: only the same holder (or a release) may write it; a new holder may not."""
    name = unique("reuse")
    first = open_backend(pg_url).lock(name)
    version = first.create(sample_record(holder="a", transitions=5), 5.0)
    other = open_backend(pg_url).lock(name)
    with pytest.raises(BackendUnavailable, match="refused to write fencing token 5"):
        other.update(sample_record(holder="b", transitions=5), version, 5.0)
    with pytest.raises(BackendUnavailable, match="refused to write fencing token 4"):
        other.update(sample_record(holder="b", transitions=4), version, 5.0)
    assert other.get(5.0).version == version, "nothing was written"
    version = other.update(sample_record(holder="a", transitions=5), version, 5.0)  # the same term, continued
    version = other.update(sample_record(holder="", transitions=5), version, 5.0)  # a release
    other.update(sample_record(holder="b", transitions=6), version, 5.0)  # a new term: above the fence


def test_a_failed_notify_never_fails_a_landed_write(pg_url, open_backend):
    backend = open_backend(pg_url)
    lock = backend.lock(unique("notify-fails"))
    lock.get(5.0)
    backend._tables = dataclasses.replace(backend._tables, channel="")  # pg_notify('') is an error
    v1 = lock.create(sample_record(), 5.0)
    v2 = lock.update(sample_record(holder="candidate-b"), v1, 5.0)
    v3 = lock.update(sample_record(holder=""), v2, 5.0)
    got = lock.get(5.0)
    assert got.version == v3 and got.record.holder == ""


# --- a hung server, killed sessions --------------------------------------------------------


def test_hung_server_is_unavailable_within_the_timeout_and_the_connection_dropped(proxy, pg_database, open_backend):
    backend = open_backend(f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    lock = backend.lock(unique("hung"))
    version = lock.create(sample_record(), 5.0)
    proxy.set_mode("blackhole")
    # an established connection (watchdog), then fresh connects into the silence (helper thread)
    for call in (lambda: lock.get(0.5), lambda: lock.update(sample_record(), version, 0.5), lambda: lock.get(0.5)):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="no answer|no connection"):
            call()
        assert time.monotonic() - started < 10.0  # bounded by the timeout (0.5 s), not by TCP's
    proxy.set_mode("pass")
    assert wait_for(lambda: _answers(lock), 10)
    assert lock.get(5.0).version == version


def _answers(lock: PostgresLock) -> bool:
    try:
        lock.get(1.0)
    except BackendUnavailable:
        return False
    return True


def _terminate_sessions(db) -> int:
    others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    pids = [row[0] for row in db.execute(others).fetchall()]
    for pid in pids:
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: not {row[0] for row in db.execute(others).fetchall()} & set(pids), 10)
    return len(pids)


def test_killed_sessions_cost_no_failed_call_and_listen_comes_back(pg_url, db):
    name = unique("killed")
    backend = PostgresBackend.from_url(pg_url)
    try:
        lock = backend.lock(name)
        version = lock.create(sample_record(), 5.0)
        assert backend._listener is not None
        backend._listener.ensure_running()
        assert backend._listener.listening.wait(10)
        assert _terminate_sessions(db) >= 2  # the pooled session and the LISTEN session
        assert lock.get(2.0).version == version  # noticed, reconnected, answered
        _terminate_sessions(db)
        new = lock.update(sample_record(holder="after-kill"), version, 2.0)
        assert lock.get(2.0).version == new
    finally:
        backend.close()
    # an election whose LISTEN session is killed still hears the release
    a = Election(name + "-e", url=pg_url, identity="a", **SLOW)
    b = Election(name + "-e", url=pg_url, identity="b", **SLOW)
    with a:
        assert a.wait_until_leader(20)
        b.start()
        try:
            assert wait_for(lambda: b.leader == "a")
            _terminate_sessions(db)
            time.sleep(0.5)  # the follower's listener reconnects and it re-reads
            a.stop()
            assert b.wait_until_leader(20), "the release was not heard after the LISTEN session was killed"
        finally:
            b.stop()


# --- elections ---------------------------------------------------------------------------


def test_three_electors_hand_over_through_notify(pg_url):
    """60 s leases and 30 s polls: each handover within the wait is the release's NOTIFY."""
    name = unique("three")
    electors = {who: Election(name, url=pg_url, identity=who, **SLOW) for who in ("a", "b", "c")}
    tokens: list[int] = []
    try:
        electors["a"].start()
        assert electors["a"].wait_until_leader(20)
        tokens.append(electors["a"].token)
        for who in ("b", "c"):
            electors[who].start()
        assert wait_for(lambda: all(electors[w].leader == "a" for w in ("b", "c")))
        remaining = {"b", "c"}
        leader = "a"
        for _ in range(2):
            electors[leader].stop()
            assert wait_for(lambda: sum(electors[w].is_leader for w in remaining) == 1), f"no takeover after {leader} left"
            leader = next(w for w in remaining if electors[w].is_leader)
            remaining.discard(leader)
            tokens.append(electors[leader].token)
            assert all(not electors[w].is_leader for w in remaining)
        assert tokens == sorted(set(tokens)), tokens
    finally:
        for election in electors.values():
            election.stop()


# --- the shared LISTEN loop on either driver ---------------------------------------------


def listen_with(module: Any, pg_database: str, backend: PostgresBackend, ping_interval: float) -> Any:
    """A Listener whose connections come from the driver ``module`` (psycopg or psycopg2),
    put in place of ``backend``'s own: the lock's writes notify its channel."""
    from celery_leader.backends.sql import Listener, Watchdog

    def connect():
        conn = module.connect(host="127.0.0.1", port=5432, user="postgres", dbname=pg_database, connect_timeout=5)
        conn.autocommit = True
        return conn

    listener = Listener(connect, backend._tables.channel, watchdog=Watchdog(), ping_interval=ping_interval,
                        label=module.__name__)  # fmt: skip
    backend._listener.stop()
    backend._listener = listener
    return listener


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_listener_hears_notifications_on_both_drivers_and_survives_a_kill(driver, pg_url, pg_database, db):
    """django:// listens with whatever driver Django uses (psycopg 3 or psycopg2)."""
    module = pytest.importorskip(driver)
    backend = PostgresBackend.from_url(pg_url)
    lock = backend.lock(unique("listen"))
    version = lock.create(sample_record(), 5.0)
    listener = listen_with(module, pg_database, backend, ping_interval=0.5)
    woke = []
    try:
        for round_ in range(2):
            waiter = threading.Thread(target=lambda v=version: woke.append(lock.wait_for_change(v, 20.0) or time.monotonic()))
            waiter.start()
            assert listener.listening.wait(10)
            time.sleep(0.3)
            assert waiter.is_alive(), "woke without a change"
            version = lock.update(sample_record(holder=f"h{round_}"), version, 5.0)  # holder changes: NOTIFY
            waiter.join(10)
            assert not waiter.is_alive(), f"{driver}: the NOTIFY did not wake the waiter"
            # the LISTEN session is killed: the loop notices, reconnects, and the next round still works
            generation = listener._generation
            killed = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name <> 'celery-leader' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            assert killed == 1
            assert wait_for(lambda g=generation: listener._generation >= g + 2 and listener.listening.is_set())
    finally:
        listener.stop()
        backend.close()


# --- passwords (a private server that demands one) -----------------------------------------


def test_password_from_the_url_pgpassword_or_a_passfile_logs_in(password_server, monkeypatch, tmp_path, open_backend):
    from urllib.parse import quote

    from .conftest import PRIVATE_PASSWORD

    base = f"127.0.0.1:{password_server}/postgres"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # never the user's own ~/.pgpass
    open_backend(f"postgresql://postgres:{quote(PRIVATE_PASSWORD, safe='')}@{base}").check(10.0)
    monkeypatch.setenv("PGPASSWORD", PRIVATE_PASSWORD)
    open_backend(f"postgresql://postgres@{base}?table=cl_env").check(10.0)
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{password_server}:*:postgres:{PRIVATE_PASSWORD.replace(':', chr(92) + ':')}\n")
    passfile.chmod(0o600)
    open_backend(f"postgresql://postgres@{base}?table=cl_passfile&passfile={quote(str(passfile), safe='')}").check(10.0)


def test_a_wrong_or_missing_password_is_a_configuration_error_that_shows_no_password(password_server, monkeypatch, tmp_path, open_backend):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    base = f"127.0.0.1:{password_server}/postgres"
    with pytest.raises(ConfigurationError, match="cannot log in.*password authentication failed") as wrong:
        open_backend(f"postgresql://postgres:Wr0ngPassw0rd@{base}").check(10.0)
    assert "Wr0ngPassw0rd" not in str(wrong.value) and "postgres:***@" in str(wrong.value)
    with pytest.raises(ConfigurationError, match="cannot log in"):
        open_backend(f"postgresql://postgres@{base}").check(10.0)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_an_idle_listener_blocks_until_a_notification_or_its_ping(driver, pg_url, pg_database):
    """The listening thread sleeps on its socket between notifications (psycopg 3's own
    ``notifies(timeout=...)`` woke it ten times a second), and still hears the next one."""
    from tests.wakeups import wakeups

    module = pytest.importorskip(driver)
    backend = PostgresBackend.from_url(pg_url)
    lock = backend.lock(unique("idle"))
    version = lock.create(sample_record(), 5.0)
    # no ping within the idle interval below: only a notification could wake the thread
    listener = listen_with(module, pg_database, backend, ping_interval=60.0)
    done = threading.Event()
    try:
        waiter = threading.Thread(target=lambda: (lock.wait_for_change(version, 60.0), done.set()))
        waiter.start()
        assert listener.listening.wait(10)
        thread = listener._thread
        assert thread is not None
        time.sleep(0.3)  # the waiter has read and sleeps; the listener blocks in its read
        before = wakeups(thread)
        time.sleep(2.0)
        idle = wakeups(thread) - before
        assert not done.is_set(), "woke without a change"
        assert idle <= 2, f"{driver}: the idle listening thread woke {idle} times in 2 s"
        lock.update(sample_record(holder="next"), version, 5.0)  # a holder change: NOTIFY
        assert done.wait(20), f"{driver}: the NOTIFY did not wake the waiter"
    finally:
        listener.stop()
        backend.close()


def test_the_watchdog_sleeps_while_nothing_is_armed():
    """With nothing armed the watchdog's thread sleeps until its idle exit (it looked once a
    second), and an armed deadline still fires."""
    import socket as socket_module

    from celery_leader.backends.sql import Watchdog
    from tests.wakeups import wakeups

    watchdog = Watchdog("test-watchdog")
    ticket = watchdog.arm(-1, time.monotonic() + 3600)
    assert not watchdog.disarm(ticket)
    thread = watchdog._thread
    assert thread is not None
    time.sleep(0.2)
    before, counted = wakeups(thread), watchdog.wakeups
    time.sleep(2.5)
    assert watchdog.wakeups == counted, "the idle watchdog woke up"
    assert wakeups(thread) - before == 0
    # a deadline still fires: the blocked reader of a socket pair is woken by the shutdown
    a, b = socket_module.socketpair()
    try:
        ticket = watchdog.arm(a.fileno(), time.monotonic() + 0.2)
        a.settimeout(30)
        assert a.recv(1) == b""  # shut down by the watchdog
        assert watchdog.disarm(ticket)
    finally:
        a.close()
        b.close()
