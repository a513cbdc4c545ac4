"""Three ``celery-leader run`` processes on a private SeaweedFS: SIGKILL, SIGTERM and SIGSTOP
of the leader, then the server frozen, stopped and restarted. No overlapping leadership,
tokens strictly increase."""

from __future__ import annotations

import signal
import time

import pytest

from celery_leader.testing.cluster import ElectorCluster
from celery_leader.testing.failover import kill_term_stop

from .conftest import Weed

LEASE = 1.0


@pytest.mark.processes
def test_three_electors_on_seaweedfs(tmp_path, prefix) -> None:
    weed = Weed(tmp_path / "seaweed")
    server = weed.start()

    def server_faults(c: ElectorCluster) -> None:
        # the server freezes: the leader must stop by its deadline, nobody can lead
        weed.signal(signal.SIGSTOP)
        try:
            time.sleep(LEASE + 0.7)
            assert c.current_leader(fresh=0.3) is None, "a node kept leading while S3 was frozen"
        finally:
            weed.signal(signal.SIGCONT)
        c.wait_for_leader(timeout=20)

        # the server stops, then comes back with its data: leadership resumes
        weed.stop()
        time.sleep(LEASE + 0.7)
        assert c.current_leader(fresh=0.3) is None, "a node kept leading while S3 was down"
        weed.start()
        c.wait_for_leader(timeout=30)

    try:
        outcome = kill_term_stop(server.url(prefix), workdir=tmp_path / "nodes", lease_duration=LEASE,
                                 then=server_faults)  # fmt: skip
    finally:
        weed.stop()
    print(outcome.report.summary())
    assert len(outcome.report.intervals) >= 5
