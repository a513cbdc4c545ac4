"""rq-scheduler with LeaderScheduler: three real ``celery-leader-rq scheduler`` processes.

As for the worker's scheduler: a feeder schedules a job every 0.2 s while the leader is
SIGKILLed, SIGTERMed and SIGSTOPped (then resumed). Proof: no job runs twice, the
schedule drains, every moved job carries a fencing token, each failover is followed by
jobs moved by a new term, and no deposed scheduler moved a job after a newer term had.
How long jobs waited is benchmarks/rq.py's. Also: a bad configuration is one line.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rq import Queue

from .harness import LEADER, REDIS_URL, ROOT, RQ, TIMING, Fleet, wait_for
from .jobs import scoped_keys

# not in [all]: rq-scheduler's `crontab` and django-celery-beat's `python-crontab` are one
# module; tests/rq/conftest.py installs rq-scheduler apart (or tox -e rq-scheduler has it)
Scheduler = pytest.importorskip("rq_scheduler", reason="rq-scheduler could not be installed").Scheduler

pytestmark = pytest.mark.processes

INTERVAL = 0.5


@pytest.fixture
def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path, "rqs")
    yield fleet
    fleet.cleanup()


class Feeder(threading.Thread):
    def __init__(self, fleet: Fleet, every: float = 0.2, ahead: float = 1.0) -> None:
        super().__init__(daemon=True)
        cls = type("FeedScheduler", (Scheduler,), scoped_keys(fleet.tag))
        self.scheduler = cls(queue_name=fleet.queue, connection=fleet.redis)
        self.path = str(fleet.record)
        self.every, self.ahead = every, ahead
        self.due: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            when = datetime.now(timezone.utc) + timedelta(seconds=self.ahead)
            job = self.scheduler.enqueue_at(when.replace(tzinfo=None), "tests.rq.jobs.record", self.path)
            self.due[job.id] = when.timestamp()


def candidate(fleet: Fleet, i: int) -> str:
    name = f"s{i}"
    fleet.spawn(name, LEADER + ["scheduler", "--url", REDIS_URL, "-i", str(INTERVAL), "--scheduler-class",
                                "tests.rq.jobs.ScopedScheduler", "--identity", name, *TIMING])
    return name


def test_three_rqschedulers_move_each_job_once(fleet: Fleet) -> None:
    election = "rq.rqscheduler." + scoped_keys(fleet.tag)["scheduled_jobs_key"].replace(":", "-")
    fleet.spawn("worker", RQ + ["worker", "--url", REDIS_URL, "-w", "rq.SimpleWorker", fleet.queue])
    for i in range(3):
        candidate(fleet, i)
    feeder = Feeder(fleet)
    feeder.start()
    try:
        wait_for("the first jobs to run", lambda: len(fleet.runs()) >= 5, timeout=60)
        names = [n for n in fleet.procs if n.startswith("s")]
        election = next(iter(_elections(fleet, names)))
        fleet.elections.add(election)
        stopped = None
        for n, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP)):
            leader = str(wait_for("a leader", lambda: fleet.holder(election)))
            seen = max(r["token"] or 0 for r in fleet.runs())
            fleet.signal(leader, sig)
            wait_for("jobs moved by a new term", lambda s=seen: any((r["token"] or 0) > s for r in fleet.runs()), timeout=60)
            if sig == signal.SIGSTOP:
                stopped = leader
            else:
                fleet.wait_dead(leader)
                candidate(fleet, 3 + n)
        assert stopped is not None
        fleet.signal(stopped, signal.SIGCONT)
        count = len(fleet.runs())
        wait_for("more jobs after the resume", lambda: len(fleet.runs()) >= count + 10, timeout=60)
    finally:
        feeder.halt.set()
        feeder.join()
    key = scoped_keys(fleet.tag)["scheduled_jobs_key"]
    wait_for("the schedule to drain", lambda: fleet.redis.zcard(key) == 0, timeout=60)
    wait_for("every job to run", lambda: set(feeder.due) <= {r["id"] for r in fleet.runs()}, timeout=60)
    assert Queue(fleet.queue, connection=fleet.redis).count == 0

    runs = fleet.runs()
    ids = [r["id"] for r in runs]
    assert len(ids) == len(set(ids)), "a scheduled job was moved (and run) twice"
    assert all(r["token"] is not None for r in runs), "a job was moved without a fencing token"
    sent = sorted(runs, key=lambda r: r["meta"]["celery_leader_sent_at"])
    late = [(a["token"], b["token"]) for a, b in zip(sent, sent[1:]) if b["token"] < a["token"]]
    assert not late, f"a deposed scheduler moved jobs after a newer term had (tokens back in send order): {late}"
    assert len({r["token"] for r in runs}) >= 4, "three failovers, but fewer than four terms moved jobs"
    waits = [r["meta"]["celery_leader_sent_at"] - feeder.due[r["id"]] for r in runs]  # shown: benchmarks/rq.py times it
    print(f"jobs {len(runs)}, tokens {sorted({r['token'] for r in runs})}, longest wait {max(waits):.2f}s")


def _elections(fleet: Fleet, names: list[str]) -> list[str]:
    """The election name the schedulers logged at start-up."""
    found = []
    for name in names:
        for line in fleet.log(name).splitlines():
            if "standing for" in line:
                found.append(line.split("standing for ", 1)[1].split(" on ", 1)[0])
    assert found, "no scheduler logged its election"
    return found


def test_bad_scheduler_class_and_timing_are_one_line(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, "bad")  # only for its environment (rq-scheduler's path)
    env = {**fleet.env, "CLT_RQ_TAG": "clt-bad-config"}
    fleet.cleanup()
    scoped = ["--scheduler-class", "tests.rq.jobs.ScopedScheduler"]
    for extra, needle in (
        (["--scheduler-class", "rq_scheduler.Scheduler"], "LeaderScheduler subclass"),
        (["--scheduler-class", "no.such.Module"], "cannot be imported"),
        ([*scoped, "--retry-period", "9"], "LEASE_DURATION"),
        ([*scoped, "--leader-url", "nosuch://x"], "unknown lock URL scheme"),
        ([*scoped, "--leader-url", "redis://u:hunter2@127.0.0.1:1/0?nope=1"], "nope"),
    ):
        result = subprocess.run(LEADER + ["scheduler", "--url", REDIS_URL, "--burst", *extra], capture_output=True,
                                text=True, timeout=60, cwd=ROOT, env=env)
        assert "hunter2" not in result.stdout + result.stderr
        assert result.returncode == 2, extra
        assert "Traceback" not in result.stderr, result.stderr
        assert needle in result.stderr, (extra, result.stderr)
