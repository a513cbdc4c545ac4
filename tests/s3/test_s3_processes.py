"""Three ``celery-leader run`` processes on a private SeaweedFS: SIGKILL, SIGTERM and SIGSTOP
of the leader, then the server frozen, stopped and restarted. No overlapping leadership,
tokens strictly increase."""

from __future__ import annotations

import signal
import time

import pytest

from celery_leader.testing.cluster import ElectorCluster

from .conftest import Weed

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


@pytest.mark.processes
def test_three_electors_on_seaweedfs(tmp_path, prefix) -> None:
    weed = Weed(tmp_path / "seaweed")
    server = weed.start()
    try:
        with ElectorCluster(
            server.url(prefix), "beat", n=3, workdir=tmp_path / "nodes",
            lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY,
        ) as c:  # fmt: skip
            i = c.wait_for_leader(timeout=20)
            c.kill(i)  # SIGKILL: no release, the others wait out the lease
            j = c.wait_for_leader(timeout=20, exclude={i})
            c.terminate(j)  # SIGTERM: released, a follower takes over at its next poll
            k = c.wait_for_leader(timeout=20, exclude={i, j})
            c.restart(i)
            time.sleep(LEASE + 0.5)  # the restarted node has watched the leader's renewals
            c.pause(k, seconds=2.5)  # frozen past its lease: the restarted node takes over
            c.wait_for_leader(timeout=20, exclude={k})

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
            report = c.check()
    finally:
        weed.stop()
    print(report.summary())
    report.assert_safe()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert len(report.intervals) >= 5
    termed = next(iv for iv in report.intervals if iv.node == f"node{j}")
    after_term = next(iv for iv in report.intervals if iv.start > termed.start)
    # after the SIGTERM the lock was released: no need to wait out the lease
    assert after_term.start - termed.end < LEASE, report.summary()
