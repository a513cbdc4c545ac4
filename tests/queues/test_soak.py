"""Soak: many rounds of SIGKILL / SIGTERM / SIGSTOP of the leader, for every queue integration.

Skipped unless ``CELERY_LEADER_SOAK=1`` (minutes); the bounded scenarios are in the
per-queue test modules. ``CELERY_LEADER_SOAK_ROUNDS`` (default 12) faults per queue.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.queues import test_arq, test_huey, test_periodiq, test_taskiq
from tests.queues.harness import assert_tokens_follow_slots, duplicates, need_redis, runs, soak, wait_runs

pytestmark = [*soak, pytest.mark.processes]

ROUNDS = int(os.environ.get("CELERY_LEADER_SOAK_ROUNDS", "12"))
FLEETS = {
    "huey": (test_huey.consumers, False),
    "taskiq": (test_taskiq.schedulers, True),
    "periodiq": (test_periodiq.schedulers, True),
    "arq": (test_arq.workers, False),
}


@pytest.mark.parametrize("kind", sorted(FLEETS))
def test_rounds_of_faults_never_run_a_slot_twice(tmp_path: Path, kind: str) -> None:
    need_redis()
    make, separate_worker = FLEETS[kind]
    fleet = make(tmp_path, f"cl-soak-{kind}-{uuid.uuid4().hex[:6]}")
    log = tmp_path / "runs.log"
    try:
        if separate_worker:
            fleet.spawn("w")
        fleet.start(3)
        leader = fleet.leader(timeout=60)
        wait_runs(log, 2, 60)
        for i in range(ROUNDS):
            fault = ("kill", "term", "stop")[i % 3]
            if fault == "stop":
                fleet.signal(leader, signal.SIGSTOP)
                new = fleet.leader(exclude=[leader], timeout=60)
                wait_runs(log, 2, 60)
                fleet.signal(leader, signal.SIGCONT)
            else:
                fleet.signal(leader, signal.SIGKILL if fault == "kill" else signal.SIGTERM)
                fleet.procs[leader].wait(30)
                new = fleet.leader(exclude=[leader], timeout=60)
                fleet.spawn(leader)
            wait_runs(log, 2, 60)
            leader = new
    finally:
        fleet.stop()
    records = runs(log)
    assert not duplicates(records), f"slots run twice: {duplicates(records)}\n{fleet.output()}"
    if kind != "arq":  # arq messages carry no token
        assert_tokens_follow_slots(records)
