"""Soak: many forced failovers (SIGKILL, SIGTERM, SIGSTOP past the lease) of three leader beats.

Skipped unless ``CELERY_LEADER_SOAK=1`` (it runs for minutes); the bounded scenarios in
test_celery_failover.py run in CI.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid

import pytest

from .harness import Deployment, check_runs

pytestmark = [
    pytest.mark.soak,
    pytest.mark.processes,
    pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1"),
]

ROUNDS = int(os.environ.get("CELERY_LEADER_SOAK_ROUNDS", "30"))


@pytest.mark.parametrize("base", ["celery.beat:PersistentScheduler", "redbeat.schedulers:RedBeatScheduler"])
def test_many_failovers_never_send_a_run_twice(tmp_path, lock_url, redis_broker, base):
    prefix = f"clt-soak-{uuid.uuid4().hex[:8]}:"
    rng = random.Random(8)
    with Deployment(tmp_path / "run", lock_url, redis_broker, CLT_BASE=base, CLT_REDBEAT_PREFIX=prefix) as dep:
        dep.worker("w1")
        alive = [f"beat{i}" for i in range(3)]
        for name in alive:
            dep.beat(name)
        serial = 3
        dep.wait_runs(lambda r: len(r) >= 3, 60, "first runs")
        for _ in range(ROUNDS):
            leader = dep.runs()[-1]["identity"]
            moment = time.time()
            how = rng.choice(["kill", "term", "stop"])
            if how == "stop":
                dep.pause(leader, 2.5)
            else:
                dep.signal(leader, signal.SIGKILL if how == "kill" else signal.SIGTERM)
                dep.procs[leader].wait(15)
                alive.remove(leader)
                name = f"beat{serial}"
                serial += 1
                dep.beat(name)
                alive.append(name)
            dep.wait_new_leader(moment, {leader} if how != "stop" else set(), count=2, timeout=30)
        report = check_runs(dep.runs(), 1.0)
        assert not report.duplicates, report.duplicates
        assert not report.token_regressions and not report.shared_tokens
