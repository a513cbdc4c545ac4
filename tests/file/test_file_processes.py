"""Three ``celery-leader run`` processes on one file:// directory: kill, terminate, pause.

Real processes, real signals; the children's own logs are the evidence (see
:mod:`celery_leader.testing.cluster`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_leader.testing.cluster import ElectorCluster, wait_dead

pytestmark = pytest.mark.processes

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def _open_interval(cluster: ElectorCluster, node: int):
    mine = cluster.terms(node)
    assert mine, f"node{node} never led"
    return mine[-1]


def test_kill_terminate_pause_never_two_leaders(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    url = f"file://{lock_dir}"
    with ElectorCluster(
        url, "beat", n=3, workdir=tmp_path / "run", lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY
    ) as cluster:
        # 1. SIGKILL the leader's `run`: its child must die with it, a standby takes over
        i = cluster.wait_for_leader(timeout=20)
        time.sleep(0.5)  # mid-term, several renewals in
        child = _open_interval(cluster, i).pid
        cluster.kill(i)
        assert wait_dead(child, 5), "the child of a SIGKILLed `run` outlived it"
        j = cluster.wait_for_leader(timeout=20, exclude={i})

        # 2. SIGTERM the new leader: graceful release, a standby takes over at once
        time.sleep(0.5)
        cluster.terminate(j)
        assert cluster.wait_exit(j, 15) == 0, "`run` did not exit cleanly on SIGTERM"
        k = cluster.wait_for_leader(timeout=20, exclude={i, j})
        graceful = next(
            (
                gap
                for prev, nxt, gap in cluster.check().gaps
                if (prev.node, nxt.node) == (cluster.identity(j), cluster.identity(k))
            ),
            None,
        )
        assert graceful is not None, f"no handover from node{j} to node{k}:\n{cluster.check().summary()}"

        # 3. bring the others back, then freeze the leader past its lease and resume it
        cluster.restart(i)
        cluster.restart(j)
        time.sleep(0.5)
        cluster.pause(k, seconds=LEASE * 2.5)
        resumed = time.time()
        m = cluster.wait_for_leader(timeout=20, exclude={k})
        time.sleep(1.0)  # let the resumed node notice and stand by, while the new one leads
        assert cluster.current_leader() == m

    report = cluster.check()
    report.assert_safe()
    assert not report.overlaps, report.summary()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}"
    assert len(report.intervals) >= 4, report.summary()
    # one retry period is the contract; the margin covers process start-up of the child
    assert graceful < RETRY + 0.8, f"graceful handover took {graceful:.3f}s\n{report.summary()}"
    by_node = {cluster.identity(n): [iv for iv in report.intervals if iv.node == cluster.identity(n)] for n in range(3)}
    assert by_node[cluster.identity(j)][-1].stopped_cleanly, "the SIGTERMed node's child was not stopped gently"
    # the paused node's child is stopped as soon as it wakes (its deadline has long passed)
    paused = [iv for iv in by_node[cluster.identity(k)] if iv.start < resumed][-1]
    assert paused.end < resumed + 1.0, f"the resumed node's child ran on for {paused.end - resumed:.3f}s"
    assert paused.token < max(iv.token for iv in by_node[cluster.identity(m)])
