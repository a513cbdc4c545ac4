"""Three ``celery-leader run`` processes on ZooKeeper: SIGKILL, SIGTERM and SIGSTOP of the leader;
no overlapping leadership, tokens strictly increase, and a SIGTERM hands over at once."""

from __future__ import annotations

import pytest

from celery_leader.testing.cluster import ElectorCluster

from .conftest import ZooKeeper

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


@pytest.mark.processes
def test_three_electors_kill_term_stop(zk_server: ZooKeeper, path: str, tmp_path) -> None:
    with ElectorCluster(
        zk_server.url(path), "beat", n=3, workdir=tmp_path, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY
    ) as c:
        i = c.wait_for_leader(timeout=20)
        c.kill(i)  # SIGKILL: no release, the others wait out the lease
        j = c.wait_for_leader(timeout=20, exclude={i})
        c.terminate(j)  # SIGTERM: graceful release, seen through the data watch
        k = c.wait_for_leader(timeout=20, exclude={i, j})
        c.restart(i)
        c.pause(k, seconds=2.5)  # frozen past its lease: someone else takes over
        c.wait_for_leader(timeout=20, exclude={k})
        report = c.check()
    print(report.summary())
    report.assert_safe()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert len(report.intervals) >= 4
    killed = next(iv for iv in report.intervals if iv.node == f"node{i}")
    termed = next(iv for iv in report.intervals if iv.start > killed.start)
    after_term = next(iv for iv in report.intervals if iv.start > termed.start)
    assert after_term.start - termed.end < LEASE, report.summary()
