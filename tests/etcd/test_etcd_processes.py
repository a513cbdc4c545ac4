"""Three ``celery-leader run`` processes on etcd: SIGKILL, SIGTERM and SIGSTOP of the leader;
no overlapping leadership, tokens strictly increase, and a SIGTERM hands over at once."""

from __future__ import annotations

import os

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import EtcdCluster


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.processes
def test_three_electors_kill_term_stop(etcd_server: EtcdCluster, prefix: str, tmp_path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``etcd`` (same processes and signals)."""
    # a 1.5 s lease: "the release is seen before the lease runs out" is measured between the
    # children's own log lines, so it includes starting the next child (a Python
    # interpreter), which takes over a second on this 2-core machine when it is loaded
    result = kill_term_stop(etcd_server.url(prefix), workdir=tmp_path, lease_duration=1.5, renew_deadline=0.9, retry_period=0.3)
    print(result.report.summary())
