"""Three ``celery-leader run`` processes on ZooKeeper: SIGKILL, SIGTERM and SIGSTOP of the
leader (the shared scenario every backend runs); no overlapping leadership, tokens strictly
increase, and a SIGTERM hands over before the lease runs out."""

from __future__ import annotations

import os

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import ZooKeeper


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.processes
def test_three_electors_kill_term_stop(zk_server: ZooKeeper, path: str, tmp_path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``zookeeper`` (same processes and signals)."""
    # a 1.5 s lease: "the release is seen before the lease runs out" is measured between the
    # children's own log lines, so it includes starting the next child (a Python
    # interpreter), which takes over a second on this 2-core machine when it is loaded
    result = kill_term_stop(zk_server.url(path), workdir=tmp_path, lease_duration=1.5, renew_deadline=0.9, retry_period=0.3)
    print(result.report.summary())
