"""A long enqueue cycle never lets a second scheduler in (RQ #1354/#2338, rq-scheduler #312).

Two elected schedulers with a 1 s lease; the leader stalls inside one enqueue cycle for
three leases (the first load of one due job sleeps, see ``tests/rq/stall.py``), then
finishes it. RQ's own locks let the standby move the same jobs when the stall outlives
them (benchmarks/rq.py shows it at RQ's TTLs); here the election renews from its own
thread, so the standby never leads, and every job runs once, with the first term's token.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rq import Queue

from .harness import LEADER, LEASE, REDIS_URL, RQ, TIMING, Fleet, wait_for
from .jobs import scoped_keys
from .stall import KEY, STALL, SlowOnce

pytestmark = pytest.mark.processes

# rq-scheduler lives apart from django-celery-beat (tests/rq/conftest.py)
Scheduler = pytest.importorskip("rq_scheduler", reason="rq-scheduler could not be installed").Scheduler

STALL_S = 3 * LEASE


@pytest.fixture
def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path, "long")
    fleet.env.update(
        CELERY_LEADER_LEASE_DURATION="1.0", CELERY_LEADER_RENEW_DEADLINE="0.6", CELERY_LEADER_RETRY_PERIOD="0.2"
    )
    yield fleet
    fleet.cleanup()


def check(fleet: Fleet, ids: list[str], due: float, election: str, first_holder: str) -> None:
    wait_for("every job to run", lambda: set(ids) <= {r["id"] for r in fleet.runs()}, timeout=60)
    while time.time() < due + STALL_S + 3:  # a second mover would repeat the batch by now
        time.sleep(0.2)
    runs = fleet.runs()
    assert sorted(r["id"] for r in runs) == sorted(ids), "a job was moved twice"
    assert {r["token"] for r in runs} == {1}, "another term moved jobs"
    assert fleet.holder(election) == first_holder
    assert max(r["meta"]["celery_leader_sent_at"] for r in runs) >= due + STALL_S - 0.5  # it did stall


def test_worker_scheduler_stalled_three_leases_keeps_leading(fleet: Fleet) -> None:
    election = f"rq.scheduler.{fleet.queue}"
    fleet.elections.add(election)
    argv = RQ + ["worker", "--url", REDIS_URL, "-w", "celery_leader.integrations.rq.LeaderSimpleWorker",
                 "--with-scheduler", "--serializer", "tests.rq.stall.SlowOnce", fleet.queue]
    fleet.spawn("a", argv)
    first = str(wait_for("worker a's scheduler to lead", lambda: fleet.holder(election), timeout=60))
    fleet.spawn("b", argv)
    time.sleep(2.0)
    queue = Queue(fleet.queue, connection=fleet.redis, serializer=SlowOnce)
    due = datetime.now(timezone.utc) + timedelta(seconds=1)
    path = str(fleet.record)
    ids = [queue.enqueue_at(due, "tests.rq.jobs.record", path, meta={STALL: STALL_S, KEY: f"{fleet.tag}:stall"}).id]
    ids += [queue.enqueue_at(due, "tests.rq.jobs.record", path).id for _ in range(5)]
    check(fleet, ids, due.timestamp(), election, first)


def test_rqscheduler_stalled_three_leases_keeps_leading(fleet: Fleet) -> None:
    keys = scoped_keys(fleet.tag)
    argv = LEADER + ["scheduler", "--url", REDIS_URL, "-i", "0.5", "--scheduler-class", "tests.rq.jobs.ScopedScheduler",
                     "-j", "tests.rq.stall.SlowJob", "--leader-name", f"{fleet.tag}.rqs", *TIMING]
    election = f"{fleet.tag}.rqs"
    fleet.spawn("worker", RQ + ["worker", "--url", REDIS_URL, "-w", "rq.SimpleWorker", fleet.queue])
    fleet.spawn("a", argv + ["--identity", "a"])
    wait_for("a to lead", lambda: fleet.holder(election) == "a", timeout=60)
    fleet.spawn("b", argv + ["--identity", "b"])
    time.sleep(2.0)
    feeder = type("Feed", (Scheduler,), keys)(queue_name=fleet.queue, connection=fleet.redis)
    due = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=1)
    path = str(fleet.record)
    ids = [feeder.enqueue_at(due, "tests.rq.jobs.record", path, job_id=f"0-stall-{fleet.tag}",
                             meta={STALL: STALL_S, KEY: f"{fleet.tag}:stall"}).id]
    ids += [feeder.enqueue_at(due, "tests.rq.jobs.record", path).id for _ in range(5)]
    # rq-scheduler keeps whole seconds: the cycle that loads them starts up to a second later
    check(fleet, ids, due.replace(tzinfo=timezone.utc).timestamp() - 1, election, "a")
