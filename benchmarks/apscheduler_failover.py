"""APScheduler across forced failovers: takeover gaps, duplicates, missed runs.

``python -m benchmarks apscheduler_failover [--failovers 20] [--quick]``

Three processes (``tests/apscheduler/app.py``), each a BackgroundScheduler with a job every
0.5 s, on Redis at 127.0.0.1:6379; lease 1 s / renew 0.6 s / retry 0.2 s. The leader is
SIGKILLed or SIGTERMed in turn and restarted. Three set-ups:

* ``guard+memory``: :func:`celery_leader.apscheduler.guard`, a memory job store per process,
  with the default (runs that fell due while standing by are skipped) and ``catch_up=True``;
* ``store+sqlalchemy``: :class:`LeaderJobStore` over one SQLAlchemy store on PostgreSQL;
* the same with ``misfire_grace_time`` 5 s instead of 1 s.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._common import summary, table, write_results

INTERVAL = 0.5


def _analyse(records: list[dict], failover_times: list[tuple[str, float]], shared: bool) -> dict:
    runs = sorted((r for r in records if r["e"] == "run"), key=lambda r: r["t"])
    scheduled = [r["s"] for r in records if r["e"] == "scheduled"]
    dup_scheduled = len(scheduled) - len(set(scheduled))
    # per-process schedules have no common slots: two processes running within half an
    # interval of each other count as the same slot run twice
    dup_close = sum(1 for a, b in zip(runs, runs[1:]) if a["pid"] != b["pid"] and b["t"] - a["t"] < INTERVAL / 2)
    missed = sum(max(0, round((b["t"] - a["t"]) / INTERVAL) - 1) for a, b in zip(runs, runs[1:]))
    gaps = {"kill": [], "term": []}
    for kind, at in failover_times:
        before = [r["t"] for r in runs if r["t"] <= at]
        after = [r for r in runs if r["t"] > at]
        if before and after:
            gaps[kind].append(after[0]["t"] - before[-1])
    return {
        "runs": len(runs),
        # a shared store names the slot: the same scheduled time run twice
        "duplicates": dup_scheduled if shared else dup_close,
        "missed": missed,
        "gap_kill": summary(gaps["kill"]),
        "gap_term": summary(gaps["term"]),
        "gaps": gaps,
    }


def scenario(label: str, failovers: int, store: str | None, extra: tuple[str, ...]) -> dict:
    from tests.apscheduler.test_apscheduler_guard import REDIS, Fleet, runs, wait_holder

    tmp = Path(tempfile.mkdtemp(prefix="cl-aps-bench-"))
    fleet = Fleet(tmp, REDIS, "aps-bench-" + uuid.uuid4().hex[:8], store=store, extra=extra)
    events: list[tuple[str, float]] = []
    try:
        for ident in ("p0", "p1", "p2"):
            fleet.spawn(ident)
            time.sleep(0.3)
        leader = wait_holder(fleet.url, fleet.name, set(), 30)
        for i in range(failovers):
            time.sleep(1.6)
            kind = "kill" if i % 2 == 0 else "term"
            ident, proc = fleet.proc_of(leader)
            events.append((kind, time.time()))
            proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            proc.wait(15)
            new = wait_holder(fleet.url, fleet.name, {leader}, 30)
            fleet.spawn(ident)
            leader = new
        time.sleep(1.6)
    finally:
        fleet.stop()
    result = _analyse(runs(fleet.logs()), events, shared=store is not None)
    result["label"] = label
    return result


def _pg_database() -> tuple[str, callable]:
    import psycopg2

    name = "cl_aps_bench_" + uuid.uuid4().hex[:8]
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", drop


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks apscheduler_failover")
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4 failovers per set-up")
    args = parser.parse_args(argv)
    n = 4 if args.quick else args.failovers
    results = [
        scenario("guard+memory (default: skip overdue on takeover)", n, None, ()),
        scenario("guard+memory catch_up=True (grace 1 s, coalesce)", n, None, ("--catch-up",)),
    ]
    for grace in (1, 5):
        url, drop = _pg_database()
        try:
            results.append(scenario(f"store+sqlalchemy (grace {grace} s, coalesce)", n, url, ("--misfire", str(grace))))
        finally:
            drop()
    rows = [
        [r["label"], r["runs"], r["duplicates"], r["missed"], r["gap_kill"]["p50"], r["gap_kill"]["max"],
         r["gap_term"]["p50"], r["gap_term"]["max"]]
        for r in results
    ]  # fmt: skip
    print(f"\n## APScheduler, {n} forced failovers each (job every {INTERVAL} s, lease 1 s)")
    print(table(rows, ["set-up", "runs", "duplicates", "missed", "gap after kill p50 s", "max s",
                       "gap after term p50 s", "max s"]))  # fmt: skip
    write_results("apscheduler_failover", {"failovers": n, "interval": INTERVAL, "results": results})
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
