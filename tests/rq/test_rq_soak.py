"""Soak: many forced failovers (SIGKILL, SIGTERM, SIGSTOP in turn) of each elected RQ scheduler.

Skipped unless ``CELERY_LEADER_SOAK=1`` (minutes). Runs the benchmark's failover loop
(``benchmarks/rq.py``) on a private ``redis-server`` (rq-scheduler's keys are global) and
asserts what it measures: no duplicate, no missed cron slot, no scheduled job lost except
one per SIGKILLed worker (the job in its hands), a takeover after every failover. The
takeover times it reports are the benchmark's to show, not this test's to judge.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.servers import free_port, running, unavailable

pytestmark = [
    pytest.mark.soak,
    pytest.mark.processes,
    pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1"),
]

ROUNDS = int(os.environ.get("CELERY_LEADER_SOAK_ROUNDS", "30"))


@pytest.mark.parametrize("kind", ["cron", "worker", "rqscheduler"])
def test_many_failovers_never_enqueue_twice(tmp_path, kind: str) -> None:
    from benchmarks.rq import failovers

    if shutil.which("redis-server") is None:
        unavailable("redis-server not found (apt-get install redis-server)")
    port = free_port()
    with running(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port):
        result = failovers(tmp_path, f"redis://127.0.0.1:{port}/0", kind, ROUNDS)
    assert result["duplicates"] == 0, result
    kills = (ROUNDS + 2) // 3
    interval = 1.0 if kind != "rqscheduler" else 0.5
    if kind == "cron":
        # catch-up "once" runs a late slot once; only a gap of two slots or more coalesces some
        samples = [t for values in result["takeover_samples_s"].values() for t in values]
        assert result["missed"] <= sum(max(0, int(t / interval) - 1) for t in samples), result
    else:
        assert result["missed"] <= (kills if kind == "worker" else 0), result
    assert sum(stats["n"] for stats in result["takeover_s"].values()) == ROUNDS, result
