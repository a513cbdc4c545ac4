"""Celery beat failover: duplicate runs, missed runs and takeover gaps over forced failovers.

``python -m benchmarks celery_failover [--failovers N] [--redbeat-default-failovers M] [--cap S]``

Three beats and one worker (Redis broker and lock on 127.0.0.1:6379), a task every second.
Each failover picks the beat that sent the last run, waits a random fraction of the period,
alternately SIGKILLs and SIGTERMs it, waits for another beat to send, then starts a fresh
beat so that three are running.

Scenarios, in the same run:

* ``leader+redbeat``: ``-S leader`` wrapping RedBeat (shared store, catch-up "once");
* ``leader+persistent``: ``-S leader`` wrapping the default shelve scheduler (catch-up "skip");
* ``redbeat-matched``: RedBeat alone, its lock at matched settings (1 s lock, 0.2 s loop);
* ``redbeat-default-sigkill`` / ``-sigterm``: RedBeat alone at its defaults (lock = 5 x max
  loop interval = 25 min, standbys poll the lock every 300 s), one failover each, with a
  cap on how long the takeover is waited for.

Leases for the leader scenarios: 1 s / 0.6 s / 0.2 s; beat_max_loop_interval 0.2 s, except
for redbeat-default, which keeps Celery's default of 300 s.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, peer_missing, summary, table, write_results

INTERVAL = 1.0
BROKER = "redis://127.0.0.1:6379/0"


def _sent_times(dep: Any) -> list[tuple[float, str]]:
    """(send time, beat) for each run; RedBeat alone stamps nothing, so use the run start."""
    out = []
    for r in dep.runs():
        when = r["sent"] if r.get("sent") is not None else r["start"]
        out.append((when, r.get("identity") or "?"))
    out.sort()
    return out


def _last_sender(dep: Any, names: list[str]) -> str | None:
    """The beat whose log shows the most recent 'Sending due task' line."""
    best, best_t = None, ""
    for name in names:
        lines = [ln for ln in dep.log_text(name).splitlines() if "Sending due task" in ln]
        if lines and lines[-1][:25] > best_t:
            best, best_t = name, lines[-1][:25]
    return best


def scenario(
    label: str, failovers: int, cap: float, env: dict[str, str], leader: bool, workdir: Path, first: int = 0
) -> dict:
    from tests.celery.harness import Deployment

    lock_url = f"redis://127.0.0.1:6379/0?prefix=clb-{uuid.uuid4().hex[:8]}:"
    prefix = f"clb-redbeat-{uuid.uuid4().hex[:8]}:"
    env = {"CLT_REDBEAT_PREFIX": prefix, **env}
    dep = Deployment(workdir / label, lock_url, BROKER, **env)
    gaps: list[float] = []
    rng = random.Random(20)
    timeouts = 0
    last_timeout = 0.0
    kinds: list[str] = []
    t0 = time.time()
    try:
        dep.worker("w1")
        alive = []
        serial = 0

        def start_beat() -> None:
            nonlocal serial
            name = f"beat{serial}"
            serial += 1
            if leader:
                dep.beat(name)
            else:
                _plain_beat(dep, name)
            alive.append(name)

        for _ in range(3):
            start_beat()
        dep.wait_runs(lambda r: len(r) >= 3, 60, "first runs")
        for n in range(failovers):
            victim = _last_sender(dep, alive)
            if victim is None:
                break
            kind = "SIGKILL" if (n + first) % 2 == 0 else "SIGTERM"
            # fail at a random point of the period, not right after a run
            time.sleep(rng.uniform(0.0, INTERVAL))
            kinds.append(kind)
            before = len(dep.runs())
            moment = time.time()
            dep.signal(victim, signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
            with contextlib.suppress(Exception):
                dep.procs[victim].wait(15)
            alive.remove(victim)
            deadline = time.monotonic() + cap
            took_over = False
            while time.monotonic() < deadline:
                fresh = [t for t, _ in _sent_times(dep) if t > moment]
                if len(dep.runs()) > before and len(fresh) >= 2:
                    took_over = True
                    break
                time.sleep(0.05)
            times = [t for t, _ in _sent_times(dep)]
            last_before = max((t for t in times if t <= moment), default=moment)
            after = [t for t in times if t > moment]
            if took_over and after:
                gaps.append(min(after) - last_before)
            else:
                timeouts += 1
                gaps.append(time.time() - last_before)
                last_timeout = time.time()
            start_beat()
            time.sleep(1.0)
        time.sleep(1.5)
    finally:
        dep.stop()
        _cleanup(prefix, lock_url)
    times = [t for t, _ in _sent_times(dep)]
    duration = times[-1] - times[0] if len(times) > 1 else 0.0
    duplicates = sum(1 for a, b in zip(times, times[1:]) if b - a < INTERVAL / 2)
    # slots that passed without a run: each gap of g seconds misses round(g / interval) - 1 runs
    missed = sum(max(0, round((b - a) / INTERVAL) - 1) for a, b in zip(times, times[1:]))
    if times and last_timeout > times[-1]:
        # nobody sent again before the end: the slots up to the give-up moment were missed too
        missed += max(0, round((last_timeout - times[-1]) / INTERVAL) - 1)
    return {
        "label": label,
        "failovers": len(kinds),
        "kinds": kinds,
        "runs": len(times),
        "seconds": round(duration, 1),
        "duplicates": duplicates,
        "missed": missed,
        "takeover_timeouts": timeouts,
        "cap_seconds": cap,
        "gaps": [round(g, 3) for g in gaps],
        "gap": summary(gaps),
        "gap_sigkill": summary([g for g, k in zip(gaps, kinds) if k == "SIGKILL"]),
        "gap_sigterm": summary([g for g, k in zip(gaps, kinds) if k == "SIGTERM"]),
        "wall": round(time.time() - t0, 1),
    }


def _plain_beat(dep: Any, name: str) -> None:
    """RedBeat alone (no leader election): ``celery beat -S redbeat.RedBeatScheduler``."""
    from tests.celery.harness import CELERY

    argv = [*CELERY, "beat", "-S", "redbeat.RedBeatScheduler", "-l", "info"]
    dep._spawn(name, argv, {**dep.env, "CLT_IDENTITY": name})


def _cleanup(prefix: str, lock_url: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        lock_prefix = lock_url.split("prefix=", 1)[1]
        for pattern in (f"{prefix}*", f"{lock_prefix}*"):
            keys = list(client.scan_iter(pattern))
            if keys:
                client.delete(*keys)
        client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks celery_failover")
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--redbeat-default-failovers", type=int, default=1, help="0 skips RedBeat at its defaults")
    parser.add_argument("--only", default="", help="comma-separated scenario labels; merged into the results file")
    parser.add_argument("--cap", type=float, default=20.0, help="longest wait for one takeover (s)")
    parser.add_argument("--default-cap", type=float, default=60.0, help="the same for redbeat-default (s)")
    args = parser.parse_args(argv)

    redbeat = "redbeat.schedulers:RedBeatScheduler"
    scenarios = [
        ("leader+redbeat", args.failovers, args.cap, {"CLT_BASE": redbeat}, True),
        ("leader+persistent", args.failovers, args.cap, {}, True),
        ("redbeat-matched", args.failovers, args.cap, {"CLT_REDBEAT_LOCK_TIMEOUT": "1"}, False),
    ]
    # at its defaults RedBeat does not take over within the cap, after which nobody leads:
    # one failover of each kind, each in its own deployment
    defaults = {"CLT_MAX_INTERVAL": "300", "CLT_REDBEAT_LOCK_TIMEOUT": ""}
    for first, kind in ((0, "sigkill"), (1, "sigterm")):
        if args.redbeat_default_failovers:
            scenarios.append((f"redbeat-default-{kind}", 1, args.default_cap, defaults, False, first))
    missing = peer_missing("celery-redbeat", "redbeat")
    if missing:
        print(missing, flush=True)
        scenarios = [sc for sc in scenarios if "redbeat" not in sc[0]]
    all_scenarios = list(scenarios)
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [sc for sc in scenarios if sc[0] in wanted]
    results = []
    with tempfile.TemporaryDirectory(prefix="celery-failover-") as tmp:
        for label, n, cap, env, leader, *first in scenarios:
            print(f"--- {label}: {n} failovers", flush=True)
            res = scenario(label, n, cap, env, leader, Path(tmp), *first)
            print(
                f"    runs {res['runs']}, duplicates {res['duplicates']}, missed {res['missed']}, "
                f"gap p50 {res['gap']['p50']:.3f}s max {res['gap']['max']:.3f}s, timeouts {res['takeover_timeouts']}",
                flush=True,
            )
            results.append(res)
    if args.only:
        with contextlib.suppress(FileNotFoundError, ValueError):
            import json

            previous = json.loads((RESULTS / "celery_failover.json").read_text())["scenarios"]
            fresh = {r["label"] for r in results}
            results = [r for r in previous if r["label"] not in fresh] + results
            order = [sc[0] for sc in all_scenarios]
            results.sort(key=lambda r: order.index(r["label"]) if r["label"] in order else len(order))
    rows = [
        [
            r["label"], r["failovers"], r["runs"], r["duplicates"], r["missed"],
            r["gap_sigkill"]["p50"], r["gap_sigkill"]["max"], r["gap_sigterm"]["p50"], r["gap_sigterm"]["max"],
            r["takeover_timeouts"],
        ]
        for r in results
    ]  # fmt: skip
    header = [
        "scenario", "failovers", "runs", "duplicate runs", "missed runs",
        "SIGKILL gap p50 (s)", "SIGKILL gap max (s)", "SIGTERM gap p50 (s)", "SIGTERM gap max (s)",
        "takeovers over the cap",
    ]  # fmt: skip
    print(table(rows, header))
    path = write_results(
        "celery_failover",
        {"interval": INTERVAL, "lease": [1.0, 0.6, 0.2], "scenarios": results, "command": "python -m benchmarks celery_failover " + " ".join(argv)},
    )
    print(f"results: {path}")
    return 0
