"""django-rq: ``manage.py rqcron_leader`` reads Django settings; two real candidates, the leader SIGKILLed."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import pytest

from .harness import Fleet, wait_for
from .test_rq_cron import INTERVAL, check_once_per_slot, enqueues

pytestmark = pytest.mark.processes

if importlib.util.find_spec("django_rq") is None:  # importing it needs configured settings
    pytest.skip("django-rq is not installed (pip install 'celery-leader[django-rq]')", allow_module_level=True)


@pytest.fixture
def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path, "dj")
    fleet.env["DJANGO_SETTINGS_MODULE"] = "tests.rq.django_settings"
    yield fleet
    fleet.cleanup()


def test_rqcron_leader_from_django_settings_survives_a_kill(fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / f"dj_cron_{fleet.tag.replace('-', '_')}.py"
    config.write_text(
        "from rq import cron\nfrom tests.rq.jobs import record\n"
        f"cron.register(record, {fleet.queue!r}, args=({str(fleet.record)!r},), interval={INTERVAL}, name={fleet.tag!r})\n"
    )
    election = f"{fleet.tag}.rq.cron"  # LEADER_ELECTION['NAME'] as the prefix
    fleet.elections.add(election)
    for i in range(2):
        fleet.spawn(f"d{i}", [sys.executable, "-m", "django", "rqcron_leader", str(config)])
    wait_for("two enqueues", lambda: len(enqueues(fleet)) >= 2, timeout=60)
    banner = next(line for line in fleet.log("d0").splitlines() if "standing for" in line)
    assert f"standing for {election} on redis://127.0.0.1:6379/0 (lease 1.0s, retry 0.2s, catch-up skip)" in banner

    holder = str(wait_for("a leader", lambda: fleet.holder(election)))
    leader = next(name for name, proc in fleet.procs.items() if f"-{proc.pid}-" in holder)
    old = max(tok for _, _, tok in enqueues(fleet))
    fleet.signal(leader, signal.SIGKILL)
    wait_for("the standby to enqueue", lambda: any(tok > old for _, _, tok in enqueues(fleet)), timeout=60)
    assert fleet.holder(election) != holder
    count = len(enqueues(fleet))
    wait_for("two more", lambda: len(enqueues(fleet)) >= count + 2, timeout=60)
    check_once_per_slot(enqueues(fleet))


def test_rqworker_with_scheduler_uses_the_leader_worker_from_settings(fleet: Fleet) -> None:
    """``manage.py rqworker --with-scheduler --burst`` with RQ['WORKER_CLASS']: elected, then moves and runs."""
    from datetime import datetime, timedelta, timezone

    from rq import Queue

    queue = Queue(fleet.queue, connection=fleet.redis)
    due = datetime.now(timezone.utc) - timedelta(seconds=2)
    ids = [queue.enqueue_at(due, "tests.rq.jobs.record", str(fleet.record)).id for _ in range(3)]
    election = f"{fleet.tag}.rq.scheduler.{fleet.queue}"  # LEADER_ELECTION['NAME'] as the prefix
    fleet.elections.add(election)
    proc = fleet.spawn("w", [sys.executable, "-m", "django", "rqworker", "--with-scheduler", "--burst", fleet.queue])
    assert proc.wait(60) == 0, fleet.log("w")
    runs = fleet.runs()
    assert sorted(r["id"] for r in runs) == sorted(ids)
    assert {r["meta"]["celery_leader_election"] for r in runs} == {election}
    assert all(r["token"] for r in runs)
    assert fleet.holder(election) == ""  # released on the way out
