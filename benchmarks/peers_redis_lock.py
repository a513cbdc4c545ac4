"""python-redis-lock as a leader lock: takeover after SIGKILL and SIGTERM, side by side with ours.

``python -m benchmarks peers_redis_lock [--cap 30]``

Two candidates each block in ``redis_lock.Lock(...).acquire()`` and print when they hold
it (what a "run one scheduler" wrapper around python-redis-lock does). The holder is
SIGKILLed, then (another round) SIGTERMed; we time until the other one holds the lock.
At the library's defaults (``expire=None``: a lock that never expires) and at settings
matched to our defaults (``expire=15, auto_renewal=True``). Ours: two ``celery-leader run``
candidates at the defaults (lease 15 s), on the same Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._common import peer_missing, table, write_results

CANDIDATE = r"""
import sys, time, redis, redis_lock
conn = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=None)  # BLPOP waits longer than redis-py 8's default
kwargs = eval(sys.argv[2])
lock = redis_lock.Lock(conn, sys.argv[1], **kwargs)
lock.acquire(blocking=True)
print("HOLD", time.time(), flush=True)
while True:
    time.sleep(1)
"""


def _wait_line(proc: subprocess.Popen, cap: float) -> float | None:
    """Wall time at which ``proc`` printed HOLD, or None within ``cap`` seconds."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if line.startswith("HOLD"):
                return float(line.split()[1])
            if not line:
                return None
    return None


def redis_lock_takeover(kwargs: dict, sig: int, cap: float) -> float | None:
    name = "peer-" + uuid.uuid4().hex[:8]
    argv = [sys.executable, "-c", CANDIDATE, name, repr(kwargs)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)]
    try:
        first = procs[0]
        if _wait_line(first, 10) is None:
            raise RuntimeError("python-redis-lock candidate did not acquire")
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))  # the standby
        time.sleep(1.0)
        killed = time.time()
        first.send_signal(sig)
        held = _wait_line(procs[1], cap)
        return None if held is None else held - killed
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ours_takeover(sig: int, cap: float) -> float | None:
    from celery_leader.testing.cluster import ElectorCluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = ElectorCluster("redis://127.0.0.1:6379/0", "peer-" + uuid.uuid4().hex[:8], 2, workdir=Path(tmp),
                                 lease_duration=15, renew_deadline=10, retry_period=2)  # fmt: skip
        with cluster:
            first = cluster.wait_for_leader(30)
            time.sleep(1.0)
            killed = time.time()
            cluster.kill(first, sig)
            try:
                cluster.wait_for_leader(cap, exclude={first})
            except AssertionError:
                return None
            starts = [iv.start for iv in cluster.intervals() if iv.node != cluster.identity(first)]
            return min(starts) - killed if starts else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks peers_redis_lock")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds to wait for a takeover")
    args = parser.parse_args(argv)
    rows, raw = [], {}
    setups = [
        ("python-redis-lock, defaults (expire=None)", lambda s: redis_lock_takeover({}, s, args.cap)),
        ("python-redis-lock, matched (expire=15, auto_renewal)",
         lambda s: redis_lock_takeover({"expire": 15, "auto_renewal": True}, s, args.cap)),
        ("celery-leader run, defaults (lease 15 s)", lambda s: ours_takeover(s, args.cap)),
    ]  # fmt: skip
    missing = peer_missing("python-redis-lock", "redis_lock")
    if missing:
        print(missing, flush=True)
        setups = [s for s in setups if not s[0].startswith("python-redis-lock")]
    for label, measure in setups:
        kill, term = measure(signal.SIGKILL), measure(signal.SIGTERM)
        raw[label] = {"sigkill_s": kill, "sigterm_s": term}

        def fmt(v: float | None) -> str:
            return f"{v:.3f}" if v is not None else f"none within {args.cap:.0f} s"

        rows.append([label, fmt(kill), fmt(term)])
    print("\n## Takeover on the same Redis (one sample each)")
    print(table(rows, ["tool", "after SIGKILL (s)", "after SIGTERM (s)"]))
    write_results("peers_redis_lock", {"cap_s": args.cap, "pid": os.getpid(), "results": raw})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
