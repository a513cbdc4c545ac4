"""Three ``celery-leader run`` processes on the real Redis: SIGKILL, SIGTERM and SIGSTOP of
the leader; no overlapping leadership, tokens strictly increase."""

from __future__ import annotations

import pytest

from celery_leader.testing.cluster import ElectorCluster

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


@pytest.mark.processes
def test_three_electors_kill_term_stop(prefix: str, tmp_path) -> None:
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    with ElectorCluster(
        url, "beat", n=3, workdir=tmp_path, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY
    ) as c:
        i = c.wait_for_leader(timeout=20)
        c.kill(i)  # SIGKILL: no release, the others wait out the lease
        j = c.wait_for_leader(timeout=20, exclude={i})
        c.terminate(j)  # SIGTERM: graceful release, published to the followers
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
    by_start = report.intervals
    # after the SIGKILL the lease had to run out; after the SIGTERM it did not
    killed = next(iv for iv in by_start if iv.node == f"node{i}")
    after_kill = next(iv for iv in by_start if iv.start > killed.start)
    termed = after_kill
    after_term = next(iv for iv in by_start if iv.start > termed.start)
    assert after_term.start - termed.end < LEASE, report.summary()
