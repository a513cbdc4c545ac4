"""Three ``celery-leader run`` processes on etcd: SIGKILL, SIGTERM and SIGSTOP of the leader;
no overlapping leadership, tokens strictly increase, and a SIGTERM hands over at once."""

from __future__ import annotations

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import EtcdCluster


@pytest.mark.processes
def test_three_electors_kill_term_stop(etcd_server: EtcdCluster, prefix: str, tmp_path) -> None:
    print(kill_term_stop(etcd_server.url(prefix), workdir=tmp_path).report.summary())
