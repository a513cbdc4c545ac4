"""APScheduler runs jobs only on the leader: three real processes, faults, a shared store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from celery_leader import ConfigurationError, open_backend
from celery_leader.apscheduler import LeaderJobStore
from celery_leader.testing.cluster import Interval, check_intervals
from tests.servers import stop_process, unavailable

REDIS = os.environ.get("CELERY_LEADER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def holder(url: str, name: str) -> str:
    backend = open_backend(url)
    try:
        got = backend.lock(name).get(2.0)
        return got.record.holder if got else ""
    finally:
        backend.close()


def wait_holder(url: str, name: str, exclude: set[str], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = holder(url, name)
        if h and h not in exclude:
            return h
        time.sleep(0.05)
    raise AssertionError(f"no new holder of {name} (excluding {exclude})")


def runs(logs: list[Path]) -> list[dict]:
    out = []
    for path in logs:
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def terms(records: list[dict]) -> list[Interval]:
    """Group job runs by fencing token into leadership intervals for the overlap checker."""
    by_token: dict[int, list[dict]] = {}
    for r in records:
        if r["e"] == "run":
            by_token.setdefault(r["token"], []).append(r)
    intervals = []
    for token, rs in by_token.items():
        pids = {r["pid"] for r in rs}
        assert len(pids) == 1, f"token {token} used by several processes {pids}"
        ts = [r["t"] for r in rs]
        intervals.append(Interval(str(rs[0]["pid"]), token, rs[0]["pid"], min(ts), max(ts), max(ts), True))
    return intervals


class Fleet:
    def __init__(self, tmp: Path, url: str, name: str, store: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.tmp, self.url, self.name, self.store, self.extra = tmp, url, name, store, list(extra)
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawned: dict[str, int] = {}

    def log(self, ident: str) -> Path:
        return self.tmp / f"{ident}.log"

    def spawn(self, ident: str) -> None:
        """Start process ``ident``; each incarnation gets its own identity (``p0.0``, ``p0.1``...)."""
        generation = self.spawned[ident] = self.spawned.get(ident, -1) + 1
        argv = [sys.executable, "-m", "tests.apscheduler.app", "--url", self.url, "--name", self.name,
                "--identity", f"{ident}.{generation}", "--log", str(self.log(ident))]  # fmt: skip
        if self.store:
            argv += ["--store", self.store]
        argv += self.extra
        err = open(self.tmp / f"{ident}.err", "ab")
        self.procs[ident] = subprocess.Popen(argv, stdout=err, stderr=err)
        err.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    def logs(self) -> list[Path]:
        return [self.log(i) for i in self.procs]

    def proc_of(self, identity: str) -> tuple[str, subprocess.Popen]:
        ident = identity.split(".")[0]
        return ident, self.procs[ident]


def failovers(fleet: Fleet, idents: list[str]) -> None:
    """SIGKILL, SIGTERM and SIGSTOP the leader in turn, restarting the victims."""
    first = wait_holder(fleet.url, fleet.name, set())
    time.sleep(1.2)
    ident, proc = fleet.proc_of(first)
    proc.kill()
    proc.wait(10)
    second = wait_holder(fleet.url, fleet.name, {first})
    fleet.spawn(ident)
    time.sleep(1.2)
    ident, proc = fleet.proc_of(second)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    third = wait_holder(fleet.url, fleet.name, {second})
    fleet.spawn(ident)
    time.sleep(1.2)
    _, proc = fleet.proc_of(third)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(2.5)
    proc.send_signal(signal.SIGCONT)
    wait_holder(fleet.url, fleet.name, set())
    time.sleep(1.5)


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.processes
def test_three_guarded_schedulers_never_run_jobs_at_once(tmp_path):
    """Soak only: CI's bounded version is tests/chaos's ``apscheduler`` integration lane (the same
    tests/apscheduler/app.py processes, SIGKILL/SIGTERM/SIGSTOP, runs counted per term)."""
    pytest.importorskip("redis")
    name = "aps-" + uuid.uuid4().hex[:8]
    idents = ["p0", "p1", "p2"]
    fleet = Fleet(tmp_path, REDIS, name)
    try:
        for ident in idents:
            fleet.spawn(ident)
        failovers(fleet, idents)
    finally:
        fleet.stop()
    records = runs(fleet.logs())
    intervals = terms(records)
    assert len(intervals) >= 4, intervals  # four terms at least: start, after kill, term, stop
    report = check_intervals(intervals)
    report.assert_safe()
    # jobs really ran throughout: no term is empty, and at most a lease plus a tick is missed per failover
    assert len([r for r in records if r["e"] == "run"]) >= 12


@pytest.fixture
def pg_database():
    psycopg2 = pytest.importorskip("psycopg2")
    name = "cl_aps_" + uuid.uuid4().hex[:8]
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL on 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.mark.processes
def test_shared_sqlalchemy_store_behind_leader_store_runs_each_time_once(tmp_path, pg_database):
    name = "aps-store-" + uuid.uuid4().hex[:8]
    idents = ["s0", "s1", "s2"]
    fleet = Fleet(tmp_path, REDIS, name, store=pg_database)
    try:
        for ident in idents:
            fleet.spawn(ident)
            time.sleep(0.3)  # each adds the job with replace_existing; let them settle
        failovers(fleet, idents)
    finally:
        fleet.stop()
    records = runs(fleet.logs())
    scheduled = [r["s"] for r in records if r["e"] == "scheduled"]
    assert len(scheduled) >= 12
    duplicates = {s for s in scheduled if scheduled.count(s) > 1}
    assert not duplicates, f"scheduled times run twice: {sorted(duplicates)}"
    check_intervals(terms(records)).assert_safe()


def test_asyncio_scheduler_uses_the_asyncio_driver_and_releases_on_shutdown():
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from celery_leader.aio import AsyncElection
    from celery_leader.apscheduler import guard

    url = f"memory://{uuid.uuid4().hex}"
    ran: dict[str, list[float]] = {"a": [], "b": []}

    async def main() -> None:
        scheds = {k: AsyncIOScheduler() for k in ran}
        guards = {}
        for key, sched in scheds.items():
            guards[key] = guard(sched, url=url, name="aio-jobs", identity=key,
                                lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)  # fmt: skip
            sched.add_job(lambda key=key: ran[key].append(time.monotonic()), "interval", seconds=0.1)
            assert isinstance(guards[key].election, AsyncElection)
            sched.start()
            await asyncio.sleep(0.3)  # "a" starts first and leads
        await asyncio.sleep(0.5)
        assert ran["a"] and not ran["b"]
        assert guards["a"].is_leader and guards["a"].token == 1
        scheds["a"].shutdown(wait=False)  # releases: "b" takes over at once
        await asyncio.sleep(0.5)
        assert guards["b"].is_leader and guards["b"].token == 2
        assert ran["b"]
        count_a = len(ran["a"])
        await asyncio.sleep(0.3)
        assert len(ran["a"]) == count_a
        # leave "b" running: asyncio.run cancels its election task, which must still release

    asyncio.run(main())
    from celery_leader.backends.memory import MemoryBackend

    got = MemoryBackend.from_url(url).lock("aio-jobs").get(1.0)
    assert got is not None and got.record.holder == "" and got.record.transitions == 2


def test_bad_options_are_refused():
    from apscheduler.schedulers.background import BackgroundScheduler

    from celery_leader import ConfigurationError
    from celery_leader.apscheduler import LeaderJobStore, guard

    with pytest.raises(ConfigurationError, match="renew_deadline"):
        guard(BackgroundScheduler(), url="memory://x", lease_duration=1, renew_deadline=3)
    with pytest.raises(ConfigurationError, match="unknown election options"):
        LeaderJobStore(url="memory://x", leese_duration=3)


def test_leader_jobstore_registered_as_entry_point():
    from importlib.metadata import entry_points

    from celery_leader.apscheduler import LeaderJobStore

    eps = {ep.name: ep for ep in entry_points(group="apscheduler.jobstores")}
    assert eps["leader"].load() is LeaderJobStore


def test_leader_jobstore_works_without_a_scheduler(tmp_path):
    from datetime import datetime, timedelta, timezone

    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler

    store = LeaderJobStore({"type": "memory"}, url=f"file://{tmp_path}", name="nosched", lease_duration=1.0,
                           renew_deadline=0.6, retry_period=0.2)  # fmt: skip
    store.start(None, "default")  # plain APScheduler stores accept this
    try:
        deadline = time.monotonic() + 10
        while not store.is_leader:
            assert time.monotonic() < deadline, "never led without a scheduler"
            time.sleep(0.05)
        from apscheduler.triggers.interval import IntervalTrigger

        job = Job(BackgroundScheduler(), id="j", func=print, trigger=IntervalTrigger(seconds=1), next_run_time=datetime.now(timezone.utc),
                  executor="default", misfire_grace_time=1, coalesce=True, max_instances=1, name="j",
                  args=(), kwargs={})  # fmt: skip
        store.add_job(job)
        assert [j.id for j in store.get_due_jobs(datetime.now(timezone.utc) + timedelta(seconds=1))] == ["j"]
    finally:
        store.shutdown()


def test_leader_jobstore_refuses_an_unknown_inner_type_at_once(tmp_path):
    store = LeaderJobStore({"type": "no-such-store"}, url=f"file://{tmp_path}", name="bad")
    with pytest.raises(ConfigurationError, match="no APScheduler job store is registered as 'no-such-store'"):
        store.start(None, "default")
