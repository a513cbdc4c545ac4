"""Three ``celery-leader run`` processes on one ``git daemon``: SIGKILL, SIGTERM, SIGSTOP of the leader.

Real processes, real signals, a real git server; the children's own logs are the evidence
(see :mod:`celery_leader.testing.cluster`), and the server's ref is checked with git itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from celery_leader.testing.cluster import ElectorCluster, wait_dead

from .conftest import Servers, git

pytestmark = pytest.mark.processes

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def test_three_electors_on_git_daemon(git_servers: Servers, tmp_path: Path) -> None:
    repo = git_servers.new_repo("electors")
    url = git_servers.url("daemon", repo)
    with ElectorCluster(
        url, "beat", n=3, workdir=tmp_path / "run", lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY
    ) as cluster:
        # 1. SIGKILL the leader's `run`: its child dies with it, a standby takes over after the lease
        i = cluster.wait_for_leader(timeout=20)
        time.sleep(0.5)
        child = cluster.terms(i)[-1].pid
        cluster.kill(i)
        assert wait_dead(child, 5), "the child of a SIGKILLed `run` outlived it"
        j = cluster.wait_for_leader(timeout=20, exclude={i})

        # 2. SIGTERM the new leader: it stops its child and releases (holder "" pushed)
        time.sleep(0.5)
        cluster.terminate(j)
        assert cluster.wait_exit(j, 15) == 0, "`run` did not exit cleanly on SIGTERM"
        k = cluster.wait_for_leader(timeout=20, exclude={i, j})

        # 3. bring the others back, then freeze the leader past its lease and resume it
        cluster.restart(i)
        cluster.restart(j)
        time.sleep(0.5)
        cluster.pause(k, seconds=LEASE * 2.5)
        resumed = time.time()
        m = cluster.wait_for_leader(timeout=20, exclude={k})
        time.sleep(1.0)
        assert cluster.current_leader() == m

    report = cluster.check()
    report.assert_safe()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}\n{report.summary()}"
    assert len(report.intervals) >= 4, report.summary()
    by_node = {n: [iv for iv in report.intervals if iv.node == cluster.identity(n)] for n in range(3)}
    assert by_node[j][-1].stopped_cleanly, "the SIGTERMed node's child was not stopped gently"
    paused = [iv for iv in by_node[k] if iv.start < resumed][-1]
    assert paused.end < resumed + 1.0, f"the resumed node's child ran on for {paused.end - resumed:.3f}s"

    # the server holds exactly one parentless commit for the lock, whatever happened
    ref = "refs/celery-leader/beat"
    assert git(repo, "rev-list", "--count", ref) == "1"
    record = json.loads(git(repo, "show", f"{ref}:beat.lock.json"))
    assert record["leaderTransitions"] >= max(tokens)
