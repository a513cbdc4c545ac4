"""The process harness's pause freezes exactly the node's tree, even while it restarts its children.

``ElectorCluster.pause`` used to read the child pids first and SIGSTOP them afterwards: a
child restarted in between was missed, and its old pid (reused) could be stopped and
continued instead. Here the tree churns all the time (its root restarts a child every few
milliseconds), and every freeze must catch the whole tree, stopped, with nothing but it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_leader.testing.cluster import _descendants, _freeze, _thaw

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")

# the root keeps one child with a grandchild, and restarts a short-lived child all the time
CHURN = """
import subprocess, sys, time
steady = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
while True:
    p = subprocess.Popen(["sleep", "300"])
    time.sleep(0.002)
    p.kill()
    p.wait()
"""


def stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_freeze_stops_the_whole_churning_tree_and_nothing_else():
    root = subprocess.Popen([sys.executable, "-c", CHURN], start_new_session=True)
    try:
        # the steady child's grandchild is up: three levels
        wait_until(lambda: len(_descendants(root.pid)) >= 3, "the tree to start")
        for _ in range(20):
            frozen = _freeze(root.pid)
            try:
                assert frozen[0] == root.pid
                for pid in frozen:
                    got = stat(pid)
                    assert got is not None and got[0] in "TZ", f"pid {pid} not stopped: {got}"
                    # nothing but the tree: every pid after the root is a child of one before it
                    if pid != root.pid:
                        assert got[1] in frozen[: frozen.index(pid)], f"pid {pid} (parent {got[1]}) is not in the tree"
                # the whole tree: the steady child and its grandchild, and the short-lived child of the moment
                assert set(_descendants(root.pid)) == set(frozen[1:])
                assert len(frozen) >= 3, frozen
            finally:
                _thaw(frozen)
            pids = set(frozen)
            wait_until(lambda pids=pids: all((stat(pid) or ("gone",))[0] != "T" for pid in pids), "the tree to continue")
            # and it churns again: the short-lived child gets replaced
            wait_until(lambda pids=pids: not set(_descendants(root.pid)) <= pids, "a new child after the thaw")
    finally:
        os.killpg(root.pid, signal.SIGCONT)
        os.killpg(root.pid, signal.SIGKILL)
        root.wait(10)
