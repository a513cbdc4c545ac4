"""Three and five ``celery-leader run`` candidates, each attached to its own serf agent.

Faults: SIGKILL of an agent together with its candidate, SIGSTOP of the leader's agent
past the lease, and a real partition (iptables drops the memberlist packets between the
agents of two groups). The children's logs are the evidence: never two leaders, tokens
strictly increasing, the minority never leads, the majority elects.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from celery_leader.testing.cluster import ElectorCluster

from .cluster import GossipElectors, SerfCluster

pytestmark = pytest.mark.processes

#: a gossip round is one serf gossip interval (~0.1 s with -profile=local) and may need a
#: resend, so one backend call (renew_deadline / 2 = 1 s here) must cover a few rounds;
#: with 1 s / 0.6 s / 0.2 s the engine allows each call 0.3 s, which a lost gossip eats.
LEASE, RENEW, RETRY = 3.0, 2.0, 0.5
#: how long after a fault the majority must have a new leader. Usually one lease (the
#: old lease runs out LEASE after the followers last saw it renewed) plus an acquire.
#: When followers race for the expired lock, an acquire can time out after its value
#: landed on some acceptors; the record then names a candidate that does not know it
#: leads, and everybody (that candidate too: the engine does not adopt a record naming
#: itself) waits one more lease. With 5 members up to 3.6 leases were measured on this
#: 2-core machine (docs/bench-gossip.md), so the bound allows four leases and a margin.
#: how long a takeover may take before the test gives up (liveness only; speed is measured
#: by benchmarks/gossip.py): generous, since a loaded machine stretches every step
TAKEOVER_WAIT = 60.0


def _started_during(cluster: ElectorCluster, node: int, start: float, end: float) -> list:
    return [iv for iv in cluster.intervals() if iv.node == cluster.identity(node) and start <= iv.start <= end]


def _takeover(cluster: ElectorCluster, exclude: set[int], since: float) -> tuple[int, float]:
    j = cluster.wait_for_leader(timeout=TAKEOVER_WAIT, exclude=exclude)
    started = max(iv.start for iv in cluster.intervals() if iv.node == cluster.identity(j))
    return j, started - since


def _kill_stop_partition(tmp_path: Path, n: int, minority: int) -> None:
    with SerfCluster(n, tmp_path / "serf") as serf, GossipElectors(serf, "beat", tmp_path / "run", lease_duration=LEASE,
                                                                  renew_deadline=RENEW, retry_period=RETRY) as cluster:
        # 1. SIGKILL the leader's agent and its candidate: the rest take over
        i = cluster.wait_for_leader(timeout=30)
        time.sleep(0.5)
        fault = time.time()
        serf.agents[i].kill()
        cluster.kill(i)
        j, _ = _takeover(cluster, {i}, fault)  # how fast: benchmarks/gossip.py and the chaos tables

        # the dead node comes back with its acceptor state (on disk) and rejoins as a standby
        serf.restart(i)
        cluster.restart(i)
        serf.wait_alive(range(n))

        # 2. SIGSTOP the leader's agent past the lease: the leader's renewals hang, it must
        #    stop by its own deadline, and somebody else leads; then it resumes as a standby
        time.sleep(0.5)
        fault = time.time()
        serf.agents[j].signal(signal.SIGSTOP)
        try:
            k, _ = _takeover(cluster, {j}, fault)
        finally:
            serf.agents[j].signal(signal.SIGCONT)
        serf.wait_alive(range(n), timeout=15)

        # 3. partition the leader with (minority - 1) others away from the majority
        time.sleep(0.5)
        others = [x for x in range(n) if x != k]
        small = [k, *others[: minority - 1]]
        large = [x for x in range(n) if x not in small]
        fault = time.time()
        serf.partition([small, large])
        try:
            m, _ = _takeover(cluster, set(small), fault)
            assert m in large
            time.sleep(LEASE)  # the minority keeps trying meanwhile
            healed = time.time()
        finally:
            serf.heal()
        for x in small:
            late = _started_during(cluster, x, fault + 0.001, healed)
            assert not late, f"minority node {x} led during the partition: {late}"
        serf.wait_alive(range(n), timeout=15)
        # healed: the minority's stale candidates rejoin; somebody leads (often still m)
        cluster.wait_for_leader(timeout=20)

    report = cluster.check()
    report.assert_safe()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}"
    assert len(report.intervals) >= 4, report.summary()


def test_three_members_kill_stop_partition(tmp_path: Path) -> None:
    _kill_stop_partition(tmp_path, 3, minority=1)


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
def test_five_members_kill_stop_partition(tmp_path: Path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``gossip-5`` (agent killed, leader
    killed and stopped, the leader's side and a minority partitioned away); the agent SIGSTOP
    runs every time in the three-member test above."""
    _kill_stop_partition(tmp_path, 5, minority=2)
