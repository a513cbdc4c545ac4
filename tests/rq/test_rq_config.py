"""The RQ integrations in one process, on the Redis at 127.0.0.1:6379: configuration,
catch-up after a takeover, and failing closed when leadership ends half-way."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from celery_leader.errors import ConfigurationError
from celery_leader.integrations.rq import sent_token
from celery_leader.integrations.rq.config import election_name, leader_config, redis_url_of
from celery_leader.integrations.rq.cron import LeaderCronScheduler
from celery_leader.integrations.rq.worker import LeaderRQScheduler
from celery_leader.registry import open_backend

from . import jobs

FAST = {"LEASE_DURATION": 1.0, "RENEW_DEADLINE": 0.6, "RETRY_PERIOD": 0.2}


@pytest.fixture
def conn():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    tag = f"clt-unit-{uuid.uuid4().hex[:8]}"
    client.tag = tag
    yield client
    keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# --- configuration -------------------------------------------------------------------


def test_sources_in_order_arguments_settings_environment() -> None:
    env = {"CELERY_LEADER_URL": "redis://env:6379/0", "CELERY_LEADER_LEASE_DURATION": "20"}
    settings = {"LEADER_ELECTION": {"URL": "redis://settings:6379/0", "RETRY_PERIOD": 3}}
    conf = leader_config({"NAME": "mine"}, rq_settings=settings, env=env, use_django=False)
    assert (conf.url, conf.name, conf.timing.lease_duration, conf.timing.retry_period) == (
        "redis://settings:6379/0", "mine", 20.0, 3.0,
    )
    assert leader_config({"URL": "memory://x"}, rq_settings=settings, env=env, use_django=False).url == "memory://x"
    default = leader_config(env={}, use_django=False)
    assert default.url is None and default.identity_default and default.catch_up is None


@pytest.mark.parametrize(
    ("explicit", "env", "needle"),
    [
        ({"LEASE": 1}, {}, "unknown key(s) LEASE"),
        ({"LEASE_DURATION": "soon"}, {}, "LEADER_ELECTION['LEASE_DURATION'] must be a number"),
        ({}, {"CELERY_LEADER_RETRY_PERIOD": "x"}, "CELERY_LEADER_RETRY_PERIOD must be a number"),
        ({"LEASE_DURATION": 5, "RENEW_DEADLINE": 6}, {}, "LEASE_DURATION / RENEW_DEADLINE"),
        ({"CATCH_UP": "all"}, {}, "CATCH_UP must be one of once, skip"),
        ({"NAME": "a b"}, {}, "--leader-name"),
        ({"IDENTITY": "x\n"}, {}, "--identity"),
        ({"LEASE_DURATION": True}, {}, "must be a number"),
        ({"URL": "  "}, {}, "must be a lock URL"),
    ],
)
def test_bad_values_name_the_key(explicit: dict, env: dict, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        leader_config(explicit, env=env, use_django=False)
    assert needle in str(info.value)


def test_settings_must_be_a_dict() -> None:
    with pytest.raises(ConfigurationError, match="must be a dict"):
        leader_config(rq_settings={"LEADER_ELECTION": "redis://x"}, env={}, use_django=False)


def test_lock_url_follows_the_rq_connection() -> None:
    tcp = redis.Redis(host="10.1.2.3", port=6380, db=4, username="u", password="p@ss/w:rd")
    assert redis_url_of(tcp) == "redis://u:p%40ss%2Fw%3Ard@10.1.2.3:6380/4"
    assert redis_url_of(redis.Redis(unix_socket_path="/run/redis.sock", db=2)) == "unix:///run/redis.sock?db=2"
    tls = redis.Redis(host="h", ssl=True, ssl_ca_certs="/ca.pem")
    assert redis_url_of(tls) == "rediss://h:6379/0?ssl_ca_certs=%2Fca.pem&ssl_cert_reqs=required"
    for client in (tcp, tls, redis.Redis(unix_socket_path="/run/redis.sock", db=2)):
        open_backend(redis_url_of(client)).close()  # our Redis backend accepts what we derive
    for unusable in (SimpleNamespace(connection_pool=SimpleNamespace()), object()):
        with pytest.raises(ConfigurationError, match="set LEADER_ELECTION"):
            redis_url_of(unusable)


def test_queue_names_become_distinct_election_names() -> None:
    assert election_name("rq.scheduler", "default") == "rq.scheduler.default"
    odd = {election_name("rq.scheduler", q) for q in ("emails:high", "emails-high", "emails high", "-emails:high")}
    assert len(odd) == 4


def test_sent_token_reads_job_meta() -> None:
    assert sent_token(SimpleNamespace(meta={"celery_leader_token": "7"})) == 7
    assert sent_token(SimpleNamespace(meta={})) is None


# --- cron: catch-up and fail closed --------------------------------------------------


def cron(conn, catch_up: str | None = None, **extra) -> LeaderCronScheduler:
    leader = {"URL": f"memory://{conn.tag}", "NAME": f"{conn.tag}.cron", **FAST, **extra}
    if catch_up:
        leader["CATCH_UP"] = catch_up
    return LeaderCronScheduler(conn, leader=leader)


def history(conn, name: str, *times: datetime) -> None:
    conn.zadd(f"rq:cron_job:{name}:jobs", {f"old-{i}": t.timestamp() for i, t in enumerate(times)})


def test_duplicate_cron_names_are_refused(conn) -> None:
    scheduler = cron(conn)
    scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=5)
    scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=7)
    with pytest.raises(ConfigurationError, match="own name="):
        scheduler._start_election()


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_takeover_reads_the_last_run_from_rq_history(conn, policy: str) -> None:
    now = datetime.now(timezone.utc)
    scheduler = cron(conn, policy)
    overdue = scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=10, name=f"{conn.tag}-a")
    recent = scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=60, name=f"{conn.tag}-b")
    fresh = scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=60, name=f"{conn.tag}-c")
    history(conn, overdue.name, now - timedelta(seconds=95))  # missed 9 runs during the "failover"
    history(conn, recent.name, now - timedelta(seconds=30))  # ran half an interval ago elsewhere
    scheduler._begin_term(1)
    assert not recent.should_run() and recent.next_enqueue_time == recent.latest_enqueue_time + timedelta(seconds=60)
    assert fresh.should_run()  # never ran anywhere: RQ runs an interval job at once
    if policy == "once":
        assert overdue.should_run()
    else:
        assert not overdue.should_run()
        gap = (overdue.next_enqueue_time - overdue.latest_enqueue_time).total_seconds()
        assert gap == 100 and overdue.next_enqueue_time > now  # the phase is kept


def test_cron_enqueues_once_with_token_then_stops_when_leadership_ends(conn) -> None:
    scheduler = cron(conn)
    first = scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=60, name=f"{conn.tag}-1")
    second = scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=60, name=f"{conn.tag}-2",
                                meta={"mine": 1})
    assert scheduler.enqueue_jobs() == []  # no election yet: nothing
    scheduler._start_election()
    try:
        assert scheduler.election.wait_until_leader(10)
        original = scheduler._enqueue_stamped

        def enqueue_then_lose(job, lead):  # leadership ends right after the first job went out
            result = original(job, lead)
            scheduler.election.step_down()
            assert lead.lost.wait(5)
            return result

        scheduler._enqueue_stamped = enqueue_then_lose
        assert scheduler.enqueue_jobs() == [first]
        ids = [j.decode() for j in conn.lrange(f"rq:queue:{conn.tag}", 0, -1)]
        assert len(ids) == 1
        job = Job.fetch(ids[0], connection=conn)
        assert sent_token(job) == 1 and job.meta["celery_leader_election"] == f"{conn.tag}.cron"
        assert second.job_options["meta"] == {"mine": 1}  # the token is not left behind in the options
    finally:
        scheduler._stop_election()


# --- the worker's scheduler: only the leader moves due jobs ---------------------------


def test_only_the_elected_worker_scheduler_moves_due_jobs(conn) -> None:
    queue = Queue(conn.tag, connection=conn)
    for _ in range(3):
        queue.enqueue_at(datetime.now(timezone.utc) - timedelta(seconds=5), jobs.record, "/dev/null")
    conf = leader_config({"URL": f"memory://{conn.tag}", **FAST}, env={}, use_django=False)
    a = LeaderRQScheduler([conn.tag], conn, leader=conf.for_this_process())
    b = LeaderRQScheduler([conn.tag], conn, leader=conf.for_this_process())
    a.start_elections()
    try:
        assert a._guards[conn.tag].election.wait_until_leader(10)
        b.start_elections()
        assert b.enqueue_scheduled_jobs() == 0  # standby: nothing moves
        assert ScheduledJobRegistry(conn.tag, connection=conn).count == 3
        assert a.enqueue_scheduled_jobs() == 3
        assert queue.count == 3 and all(sent_token(j) == 1 for j in queue.jobs)
    finally:
        a.stop_elections()
        b.stop_elections()


def test_cron_behind_a_black_holed_lock_redis_stops_enqueuing_and_stops_bounded(conn) -> None:
    """The lock's Redis hangs instead of failing: the term ends at its deadline, nothing is
    enqueued after it, and stopping (the release cannot get through) is bounded and leaves
    no election thread behind."""
    import threading
    import time

    from benchmarks.tcpproxy import TcpProxy

    proxy = TcpProxy(6379)
    scheduler = LeaderCronScheduler(conn, leader={"URL": f"redis://127.0.0.1:{proxy.port}/0", "NAME": f"{conn.tag}.cron",
                                                  **FAST})  # fmt: skip
    scheduler.register(jobs.record, conn.tag, args=("/dev/null",), interval=60, name=f"{conn.tag}-1")
    before = {t.ident for t in threading.enumerate()}
    scheduler._start_election()
    try:
        assert scheduler.election.wait_until_leader(10)
        lead = scheduler.election.leadership
        proxy.set_mode("blackhole")
        assert lead.lost.wait(5), "the term outlived a lock Redis that answers nothing"
        assert scheduler.election.leadership is None
        assert scheduler.enqueue_jobs() == []
        assert conn.llen(f"rq:queue:{conn.tag}") == 0
    finally:
        started = time.monotonic()
        scheduler._stop_election()
        stopped_in = time.monotonic() - started
        proxy.close()
    assert stopped_in < 30, f"stopping behind a black hole hung ({stopped_in:.1f} s)"  # bounded, not fast

    def left() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before and "watchdog" not in t.name]

    give_up = time.monotonic() + 10
    while left() and time.monotonic() < give_up:
        time.sleep(0.05)
    assert not left(), f"threads left after stop: {left()}"
