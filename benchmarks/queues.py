"""Huey, taskiq and periodiq across forced failovers, beside each project's own advice.

``python -m benchmarks queues [huey|taskiq|periodiq ...] [--failovers 8] [--quick]``

Everything runs as real processes on the Redis at 127.0.0.1:6379, with the test apps of
``tests/queues/`` (a periodic task every 1-s slot, recorded by the worker that ran it).
Per queue, side by side in the same run:

* ``celery-leader x3``: three schedulers (Huey: consumers) with the integration, lease
  1 s / renew 0.6 s / retry 0.2 s; the leader is SIGKILLed or SIGTERMed in turn, and
  restarted once a new leader is seen.
* ``alone x1 + restart``: the project's advice (one scheduler), with a supervisor that
  restarts it at once after the same SIGKILL/SIGTERM.
* ``alone x3``: three plain schedulers for a few seconds (what the advice warns about).
  periodiq has minute resolution, so its plain runs count the messages sent for the
  current minute.

Gap: from the last periodic run before the fault to the first one after it (worker
side). Duplicates: a slot run more than once (celery-leader; the slot is on the message),
or runs per second beyond one (plain schedulers, whose messages carry no slot).
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks._common import summary, table, write_results

TIMING = ("--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2")


@dataclass
class Queue:
    name: str
    env: Callable[[str, Path], dict[str, str]]
    leader: Callable[[str, str], list[str]]  # (queue, identity) -> argv
    plain: Callable[[str], list[str]]
    worker: list[str] | None  # a separate worker process, if the scheduler does not consume
    minute_resolution_plain: bool = False


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


QUEUES = {
    "huey": Queue(
        "huey",
        lambda q, tmp: {"HUEY_TEST_NAME": q, "HUEY_TEST_LOG": str(tmp / "runs.log")},
        lambda q, ident: _py("-m", "celery_leader.integrations.huey", "tests.queues.huey_app.huey", "--leader-url",
                             "redis://127.0.0.1:6379/0", "--leader-identity", ident, *TIMING, "-w", "2"),
        lambda q: _py("-m", "huey.bin.huey_consumer", "tests.queues.huey_app.huey", "-w", "2"),
        None,
    ),  # fmt: skip
    "taskiq": Queue(
        "taskiq",
        lambda q, tmp: {"TASKIQ_TEST_QUEUE": q, "TASKIQ_TEST_LOG": str(tmp / "runs.log")},
        lambda q, ident: _py("-c", f"import os, sys; os.environ['TASKIQ_TEST_IDENTITY'] = {ident!r}; "
                             "from taskiq.__main__ import main; sys.argv = ['taskiq', 'scheduler', "
                             "'tests.queues.taskiq_app:scheduler']; main()"),
        lambda q: _py("-m", "taskiq", "scheduler", "tests.queues.taskiq_app:plain_scheduler"),
        _py("-m", "taskiq", "worker", "tests.queues.taskiq_app:broker", "--workers", "1"),
    ),  # fmt: skip
    "periodiq": Queue(
        "periodiq",
        lambda q, tmp: {"PERIODIQ_TEST_QUEUE": q, "PERIODIQ_TEST_LOG": str(tmp / "runs.log")},
        lambda q, ident: _py("-m", "celery_leader.integrations.periodiq", "tests.queues.periodiq_app",
                             "--leader-url", "redis://127.0.0.1:6379/0", "--leader-name", f"periodiq.{q}",
                             "--leader-identity", ident, *TIMING, "--slot-seconds", "1"),
        lambda q: _py("-c", "import sys; from periodiq import entrypoint; "
                      "sys.argv = ['periodiq', 'tests.queues.periodiq_app']; entrypoint()"),
        _py("-m", "dramatiq", "tests.queues.periodiq_app", "-p", "1", "-t", "2"),
        minute_resolution_plain=True,
    ),  # fmt: skip
}


def _election_name(queue: Queue, q: str) -> str:
    return f"{queue.name}.{q}"


def _fleet(queue: Queue, tmp: Path, q: str, plain: bool):  # noqa: ANN202
    from tests.queues.harness import Fleet

    def argv(ident: str, identity: str) -> list[str]:
        if ident == "w":
            assert queue.worker is not None
            return queue.worker
        return queue.plain(q) if plain else queue.leader(q, identity)

    return Fleet(tmp, _election_name(queue, q), argv, queue.env(q, tmp))


def _gaps(records: list[dict], faults: list[tuple[str, float]]) -> dict[str, list[float]]:
    times = sorted(r["t"] for r in records)
    gaps: dict[str, list[float]] = {"kill": [], "term": []}
    for kind, at in faults:
        before = [t for t in times if t <= at]
        after = [t for t in times if t > at]
        if before and after:
            gaps[kind].append(after[0] - before[-1])
    return gaps


def _close_pairs(records: list[dict]) -> int:
    """Plain 1-s schedules carry no slot: two runs less than half a slot apart are one slot twice."""
    times = sorted(r["t"] for r in records)
    return sum(1 for a, b in zip(times, times[1:]) if b - a < 0.5)


def _missed(gaps: dict[str, list[float]]) -> int:
    """Slots lost in the failovers: a gap of k seconds between 1-s runs skipped k-1 of them."""
    return sum(max(0, round(g) - 1) for values in gaps.values() for g in values)


def with_leader(queue: Queue, failovers: int) -> dict:
    from tests.queues.harness import duplicates, runs, wait_runs

    tmp = Path(tempfile.mkdtemp(prefix=f"cl-bench-{queue.name}-"))
    q = f"cl-bench-{queue.name}-{uuid.uuid4().hex[:6]}"
    fleet = _fleet(queue, tmp, q, plain=False)
    log = tmp / "runs.log"
    faults: list[tuple[str, float]] = []
    try:
        if queue.worker:
            fleet.spawn("w")
        fleet.start(3)
        leader = fleet.leader(timeout=60)
        wait_runs(log, 2, 60)
        for i in range(failovers):
            kind = "kill" if i % 2 == 0 else "term"
            faults.append((kind, time.time()))
            fleet.signal(leader, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            fleet.procs[leader].wait(30)
            new = fleet.leader(exclude=[leader], timeout=60)
            wait_runs(log, 2, 60)
            fleet.spawn(leader)
            leader = new
            time.sleep(1.0)
    finally:
        fleet.stop()
    records = runs(log)
    gaps = _gaps(records, faults)
    return {"setup": "celery-leader x3", "runs": len(records), "duplicates": sum(n - 1 for n in duplicates(records).values()),
            "missed": _missed(gaps), "gap_kill": summary(gaps["kill"]), "gap_term": summary(gaps["term"]),
            "gaps": gaps}  # fmt: skip


def alone_restarted(queue: Queue, restarts: int) -> dict:
    from tests.queues.harness import runs, wait_runs

    tmp = Path(tempfile.mkdtemp(prefix=f"cl-bench-{queue.name}-1-"))
    q = f"cl-bench-{queue.name}-{uuid.uuid4().hex[:6]}"
    fleet = _fleet(queue, tmp, q, plain=True)
    log = tmp / "runs.log"
    faults: list[tuple[str, float]] = []
    first_after: list[float] = []
    try:
        if queue.worker:
            fleet.spawn("w")
        fleet.spawn("c0")
        wait_runs(log, 1, 90)
        for i in range(restarts):
            kind = "kill" if i % 2 == 0 else "term"
            at = time.time()
            faults.append((kind, at))
            fleet.signal("c0", signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            fleet.procs["c0"].wait(30)
            fleet.spawn("c0")  # the supervisor restarts it at once
            wait_runs(log, 1, 90)
            first_after.append(min(r["t"] for r in runs(log) if r["t"] > at) - at)
            if not queue.minute_resolution_plain:
                time.sleep(1.5)
    finally:
        fleet.stop()
    records = runs(log)
    gaps = _gaps(records, faults)
    result = {"setup": "alone x1 + restart", "runs": len(records), "gap_kill": summary(gaps["kill"]),
              "gap_term": summary(gaps["term"]), "gaps": gaps, "fault_to_first_run": summary(first_after)}  # fmt: skip
    if queue.minute_resolution_plain:
        # every restart sends the current minute again: count runs per minute beyond one
        minutes = collections.Counter(int(r["t"] // 60) for r in records)
        result["duplicates"] = sum(n - 1 for n in minutes.values() if n > 1)
    else:
        result["duplicates"] = _close_pairs(records)
        result["missed"] = _missed(gaps)
    return result


def alone_three(queue: Queue, seconds: float) -> dict:
    from tests.queues.harness import runs, wait_runs

    tmp = Path(tempfile.mkdtemp(prefix=f"cl-bench-{queue.name}-3-"))
    q = f"cl-bench-{queue.name}-{uuid.uuid4().hex[:6]}"
    fleet = _fleet(queue, tmp, q, plain=True)
    log = tmp / "runs.log"
    try:
        if queue.worker:
            fleet.spawn("w")
        fleet.start(3)
        wait_runs(log, 3, 90)
        time.sleep(seconds)
    finally:
        fleet.stop()
    records = runs(log)
    if queue.minute_resolution_plain:
        minutes = collections.Counter(int(r["t"] // 60) for r in records)
        dup = sum(n - 1 for n in minutes.values() if n > 1)
    else:
        dup = _close_pairs(records)
    return {"setup": "alone x3", "runs": len(records), "duplicates": dup}


def arq_lag(lags: tuple[float, ...] = (5.0, 70.0), keeps: tuple[float, ...] = (0.0, 3600.0)) -> list[dict]:
    """arq's own deduplication: a real worker runs a cron job every second; a second
    scheduler whose view of time lags (clock behind, or resumed after a pause: arq keeps
    ``next_run`` across it) enqueues the same runs late. Count the runs that ran twice."""
    import asyncio
    import datetime
    import os
    import subprocess

    from tests.queues.harness import _pythonpath, runs

    results = []
    procs = []
    cases = []
    windows: list[tuple[float, float, Path, float, float]] = []
    try:
        for keep in keeps:
            tmp = Path(tempfile.mkdtemp(prefix="cl-bench-arq-"))
            tag = uuid.uuid4().hex[:6]
            env = {**os.environ, "PYTHONPATH": _pythonpath(), "ARQ_BENCH_QUEUE": f"cl-arq-{tag}",
                   "ARQ_BENCH_LOG": str(tmp / "runs.log"), "ARQ_BENCH_KEEP": str(keep),
                   "ARQ_BENCH_NAME": f"cron:tick-{tag}"}  # fmt: skip
            out = open(tmp / "worker.out", "wb")
            procs.append(subprocess.Popen(_py("-m", "arq", "benchmarks._arq_app.WorkerSettings"), env=env, stdout=out,
                                          stderr=subprocess.STDOUT))  # fmt: skip
            cases.append((keep, tmp, env))
        time.sleep(max(lags) + 8.0)  # the worker has run every slot the lagging scheduler will send again
        for keep, tmp, env in cases:
            for lag in lags:

                async def lagging(lag: float = lag, env: dict = env, keep: float = keep, tmp: Path = tmp) -> None:
                    from arq import cron
                    from arq.connections import create_pool
                    from arq.worker import Worker

                    from benchmarks._arq_app import WorkerSettings, tick

                    jobs = [cron(tick, name=env["ARQ_BENCH_NAME"], second=set(range(60)))]
                    w = Worker(functions=[], cron_jobs=jobs, redis_settings=WorkerSettings.redis_settings,
                               queue_name=env["ARQ_BENCH_QUEUE"])  # fmt: skip
                    w._pool = await create_pool(WorkerSettings.redis_settings)
                    start = datetime.datetime.now(tz=w.timezone) - datetime.timedelta(seconds=lag)
                    windows.append((keep, lag, tmp, start.timestamp() * 1000, (start.timestamp() + 6) * 1000))
                    for i in range(6):  # six heartbeats: five slots enqueued late
                        await w.run_cron(start + datetime.timedelta(seconds=i), 0.5)
                    await w._pool.aclose()

                asyncio.run(lagging())
        # a late run whose id is still "in progress" (arq keeps that key 60 s after a cron run) waits for it
        time.sleep(66.0)
        for keep, lag, tmp, lo, hi in windows:
            counts = collections.Counter(r["id"] for r in runs(tmp / "runs.log"))
            twice = [i for i, n in counts.items() if n > 1 and lo <= int(i.rsplit(":", 1)[1]) <= hi]
            results.append({"keep_result": keep, "lag": lag, "late_enqueues": 5, "ran_twice": len(twice)})
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks queues")
    parser.add_argument("queues", nargs="*", help=f"some of {', '.join(QUEUES)} (default: all)")
    parser.add_argument("--failovers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 failovers, 2 restarts")
    args = parser.parse_args(argv)
    unknown = set(args.queues) - set(QUEUES) - {"arq"}
    if unknown:
        parser.error(f"unknown queue {sorted(unknown)}; choose from {', '.join(QUEUES)}")
    from tests.queues.harness import need_redis

    need_redis()
    n = 2 if args.quick else args.failovers
    out: dict[str, list[dict]] = {}
    arq: list[dict] = []
    for name in args.queues or [*QUEUES, "arq"]:
        if name == "arq":
            arq = arq_lag()
            print("arq:", json.dumps(arq))
            continue
        queue = QUEUES[name]
        out[name] = [with_leader(queue, n), alone_restarted(queue, max(2, n // 2)), alone_three(queue, 6.0)]
        print(f"{name}: {json.dumps([{k: v for k, v in r.items() if k != 'gaps'} for r in out[name]], default=str)}")
    rows = []
    for name, results in out.items():
        for r in results:
            gk, gt = r.get("gap_kill"), r.get("gap_term")
            rows.append([name, r["setup"], r["runs"], r["duplicates"], r.get("missed", "-"),
                         gk["p50"] if gk else "-", gk["max"] if gk else "-",
                         gt["p50"] if gt else "-", gt["max"] if gt else "-"])  # fmt: skip
    print(f"\n## Task-queue schedulers, {n} forced failovers each (1-s slots; celery-leader lease 1 s)")
    print(table(rows, ["queue", "set-up", "runs", "duplicates", "slots missed", "gap after SIGKILL p50 s", "max s",
                       "gap after SIGTERM p50 s", "max s"]))  # fmt: skip
    if arq:
        print("\n## arq: cron runs enqueued late by a lagging scheduler (5 late enqueues each)")
        print(table([[r["keep_result"], r["lag"], r["late_enqueues"], r["ran_twice"]] for r in arq],
                    ["cron keep_result s", "lag s", "late enqueues", "ran twice"]))  # fmt: skip
    write_results("queues" if not args.queues else "queues-" + "-".join(args.queues),
                  {"failovers": n, "results": out, "arq": arq})  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
