"""The process failover scenario every backend runs, importable by plugin authors.

:func:`kill_term_stop` starts ``n`` ``celery-leader run`` processes on one lock URL and
puts the leader through the three ways a process stops leading: SIGKILL (no release: the
others wait out the lease), SIGTERM (release: a follower takes over without waiting for
the lease) and SIGSTOP past its lease (frozen, then resumed: its work must be stopped the
moment it wakes). It asserts what must hold on every backend and returns what happened, so
that a backend's test can add its own checks (what the server stored, extra faults)::

    from celery_leader.testing.failover import kill_term_stop

    @pytest.mark.processes
    def test_failover(tmp_path):
        kill_term_stop("myscheme://...", workdir=tmp_path)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cluster import ElectorCluster, Interval, Report, wait_dead

__all__ = ["Failover", "kill_term_stop"]


@dataclass
class Failover:
    """What :func:`kill_term_stop` did; nodes are indexes into ``cluster``."""

    cluster: ElectorCluster
    report: Report
    killed: int
    terminated: int
    paused: int
    successor: int
    #: wall-clock time at which the paused node was resumed
    resumed: float
    #: seconds from the end of the SIGTERMed leader's term to the start of the next term
    graceful_gap: float


def kill_term_stop(
    url: str,
    *,
    workdir: Path,
    name: str = "beat",
    n: int = 3,
    lease_duration: float = 1.0,
    renew_deadline: float = 0.6,
    retry_period: float = 0.2,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    then: Callable[[ElectorCluster], None] | None = None,
) -> Failover:
    """SIGKILL the leader, SIGTERM the next one, SIGSTOP the third past its lease.

    ``env`` is the processes' environment (default: this one's). ``then(cluster)`` runs
    afterwards with the cluster still up (more faults: a server
    frozen, stopped, restarted). Asserted here: never two leaders (the children's own logs,
    the resumed node's included), tokens strictly increasing, the SIGKILLed ``run``'s child
    dies with it, ``run`` exits 0 on SIGTERM, stops its child gently and releases the lock
    (its log says so). No timing is asserted: how fast a handover is depends on the machine
    (the benchmarks measure it); ``graceful_gap`` reports it. ``timeout`` bounds each wait
    for something that must happen (a leader, an exit, a child's death); it is generous
    because only safety is the point, and a loaded machine is slow, not wrong.
    """
    with ElectorCluster(
        url, name, n=n, workdir=workdir, lease_duration=lease_duration, renew_deadline=renew_deadline,
        retry_period=retry_period, env=env,
    ) as cluster:  # fmt: skip
        # 1. SIGKILL: no release; the child must die with its `run`, a standby waits out the lease
        killed = cluster.wait_for_leader(timeout=timeout)
        time.sleep(0.5)  # mid-term, several renewals in
        child = cluster.terms(killed)[-1].pid
        cluster.kill(killed)
        assert wait_dead(child, timeout), "the child of a SIGKILLed `run` outlived it"
        terminated = cluster.wait_for_leader(timeout=timeout, exclude={killed})

        # 2. SIGTERM: `run` stops its child, releases and exits 0
        time.sleep(0.5)
        cluster.terminate(terminated)
        assert cluster.wait_exit(terminated, timeout) == 0, "`run` did not exit cleanly on SIGTERM"
        cluster.wait_for_leader(timeout=timeout, exclude={killed, terminated})

        # 3. the others back, and following the leader (each has seen it lead: no hoping that
        #    they started in time on a loaded machine), then the leader frozen past its lease
        cluster.restart(killed)
        cluster.restart(terminated)
        paused = _wait_seen_leader(cluster, (killed, terminated), timeout)
        cluster.pause(paused, seconds=lease_duration * 2.5)
        resumed = time.time()
        successor = cluster.wait_for_leader(timeout=timeout, exclude={paused})
        time.sleep(1.0)  # the resumed node notices it lost; never two leaders: checked below
        cluster.wait_for_leader(timeout=timeout)  # and somebody leads (not necessarily still the same)
        if then is not None:
            then(cluster)

    report = cluster.check()
    report.assert_safe()
    tokens = [iv.token for iv in sorted(report.intervals, key=lambda iv: iv.start)]
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}\n{report.summary()}"
    assert len(report.intervals) >= 4, report.summary()

    def terms(node: int) -> list[Interval]:
        return [iv for iv in report.intervals if iv.node == cluster.identity(node)]

    termed = terms(terminated)[0]  # its first term is the one SIGTERM ended
    assert termed.stopped_cleanly, "the SIGTERMed node's child was not stopped gently"
    said = (Path(workdir) / f"node{terminated}.0.out").read_text(errors="replace")
    assert f"{name}: released the lock" in said, f"the SIGTERMed `run` did not release:\n{said[-2000:]}"
    after = next(iv for iv in report.intervals if iv.start > termed.start)
    graceful = after.start - termed.end
    frozen = [iv for iv in terms(paused) if iv.start < resumed][-1]
    assert frozen.token < max(iv.token for iv in terms(successor))
    return Failover(cluster, report, killed, terminated, paused, successor, resumed, graceful)


def _wait_seen_leader(cluster: ElectorCluster, nodes: tuple[int, ...], timeout: float) -> int:
    """The current leader, once each of ``nodes``' current ``run`` (but its own) has logged that it leads.

    Whoever leads then: on a loaded machine the lead can move while the nodes start, and
    waiting for one particular leader to be seen would wait for a line that never comes.
    """
    outs = [cluster.workdir / f"node{node}.{cluster.generation[node] - 1}.out" for node in nodes]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.current_leader()
        if leader is not None:
            line = f"{cluster.identity(leader)} leads {cluster.name}"
            seen = (out.exists() and line in out.read_text(errors="replace") for node, out in zip(nodes, outs) if node != leader)
            if all(seen):
                return leader
        time.sleep(0.05)
    raise AssertionError(f"nodes {list(nodes)} never all saw the leader lead within {timeout} s; logs in {cluster.workdir}")
