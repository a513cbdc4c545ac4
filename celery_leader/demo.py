"""``celery-leader demo``: failover on the embedded file backend, no server needed.

Three ``celery-leader run`` candidates share a temporary ``file://`` directory; each runs a
small job that logs while it leads. The demo kills the leader with SIGKILL (takeover when
the lease runs out), then stops the next one with SIGTERM (handover at once), and prints
the timeline with the measured times, checked for overlap and token order.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .testing.cluster import ElectorCluster

LEASE, RENEW, RETRY = 2.0, 1.2, 0.4


def _say(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:6.2f}s] {text}", flush=True)


def run_demo(keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="celery-leader-demo-"))
    url = "file://" + str(workdir / "locks")
    (workdir / "locks").mkdir()
    print(f"celery-leader demo: 3 candidates, lock {url}")
    print(f"lease {LEASE} s, renew deadline {RENEW} s, retry period {RETRY} s\n")
    t0 = time.monotonic()
    cluster = ElectorCluster(url, "demo", 3, workdir=workdir, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
    try:
        cluster.start()
        first = cluster.wait_for_leader(timeout=20)
        _say(t0, f"node{first} leads")
        time.sleep(1.0)
        _say(t0, f"SIGKILL node{first} (a crash: no release, the lease must run out)")
        killed_at = time.time()
        cluster.kill(first)
        second = cluster.wait_for_leader(timeout=20, exclude={first})
        crash = time.time() - killed_at
        _say(t0, f"node{second} leads: takeover {crash:.2f} s after the crash ({crash / LEASE:.2f} x lease)")
        time.sleep(1.0)
        _say(t0, f"SIGTERM node{second} (graceful: it stops its job and releases the lock)")
        termed_at = time.time()
        cluster.terminate(second)
        third = cluster.wait_for_leader(timeout=20, exclude={first, second})
        handover = time.time() - termed_at
        _say(t0, f"node{third} leads: handover {handover * 1000:.0f} ms after SIGTERM")
        time.sleep(0.5)
    finally:
        cluster.stop()
    report = cluster.check()
    print("\ntimeline (from the jobs' own logs):")
    for iv in report.intervals:
        end = "stopped" if iv.stopped_cleanly else "killed"
        print(f"  {iv.node:6} token {iv.token:3}  {iv.start - report.intervals[0].start:6.2f}s .. "
              f"{iv.end - report.intervals[0].start:6.2f}s  ({end})")
    print("\n" + report.summary())
    verdict = "never two leaders, tokens always increased" if report.safe else "SAFETY VIOLATED"
    print(f"\nresult: {verdict}")
    if keep:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.safe else 1
