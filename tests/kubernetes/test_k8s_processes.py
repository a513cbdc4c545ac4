"""Three ``celery-leader run`` processes on one Lease: kill, terminate, pause; the API server
stopped and restarted; watch streams cut. The API server runs in a thread of the test
process, reachable by the ``run`` processes over TCP through the kubeconfig the fixture wrote.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_leader.backends.kubernetes import RBAC_VERBS
from celery_leader.testing.cluster import ElectorCluster
from celery_leader.testing.failover import kill_term_stop

from .conftest import NAMESPACE

pytestmark = pytest.mark.processes

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def _assert_tokens_increase(report) -> None:
    report.assert_safe()
    tokens = [iv.token for iv in sorted(report.intervals, key=lambda iv: iv.start)]
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}"


def test_kill_terminate_pause_outage_and_cut_watches(apiserver, k8s_url, tmp_path: Path) -> None:
    """One cluster of three (its start-up is the costly part): the shared kill/term/stop
    scenario, then watches cut and the API server away for longer than the lease."""
    apiserver.allowed_verbs = set(RBAC_VERBS)  # exactly the documented Role
    seen: dict[str, float | int] = {}

    def outage_and_cut_watches(cluster: ElectorCluster) -> None:
        assert apiserver.lease(NAMESPACE, "beat")["spec"]["leaseDurationSeconds"] == 1
        i = cluster.wait_for_leader(timeout=20)
        # cut every watch a few times: no change of leader, followers reconnect
        watches = apiserver.requests["watch"]
        for _ in range(3):
            apiserver.cut_watches()
            time.sleep(0.3)
        assert cluster.current_leader() == i
        assert apiserver.requests["watch"] >= watches + 2, "followers did not re-watch after the cut"
        # a release just after a cut is still seen
        apiserver.cut_watches()
        cluster.terminate(i)
        j = cluster.wait_for_leader(timeout=20, exclude={i})
        cluster.restart(i)
        time.sleep(0.5)
        # the API server goes away for longer than the lease: nobody may lead meanwhile
        apiserver.stop()
        stopped = time.time()
        time.sleep(LEASE * 2.5)
        assert cluster.current_leader(fresh=0.3) is None, "a node led while the API server was down"
        apiserver.forget_watch_cache()  # as a real restart does: old versions get 410
        apiserver.start()
        k = cluster.wait_for_leader(timeout=20)
        time.sleep(0.5)
        seen.update(j=j, k=k, stopped=stopped)

    outcome = kill_term_stop(k8s_url, workdir=tmp_path / "run", lease_duration=LEASE, renew_deadline=RENEW,
                             retry_period=RETRY, then=outage_and_cut_watches)  # fmt: skip
    report, cluster, stopped = outcome.report, outcome.cluster, seen["stopped"]
    _assert_tokens_increase(report)
    before = [iv for iv in report.intervals if iv.node == cluster.identity(seen["j"]) and iv.start < stopped][-1]
    assert before.end < stopped + LEASE, f"{before.node}'s child ran {before.end - stopped:.3f}s into the outage"
    after = [iv for iv in report.intervals if iv.start > stopped]
    assert after and after[0].node == cluster.identity(seen["k"]) and after[0].token > before.token
