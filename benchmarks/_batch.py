"""Batched renewals against one by one (issue 21), for a backend with ``update_many``: the
client's CPU, the server's CPU and the round trips per renewal, and the wall time of a
round of N renewals.

Both ways renew the same N lock objects, a round each in turn (the order alternating), so
that the machine's load falls on both alike; round 0 is a warm-up. CPU and round trips are
means over the rounds, the wall time of a round the median. Batches are as large as
the asyncio scheduler sends them (``aio._Renewals.MAX_BATCH``).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks._common import table
from celery_leader.lock import Backend, RenewBatch
from celery_leader.record import LeaderRecord

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float | None:
    """CPU seconds (user + system) of ``pids`` so far (Linux ``/proc``); ``None`` if unreadable."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    except (OSError, IndexError, ValueError):
        return None
    return total


def measure(
    backend: Backend,
    n: int,
    rounds: int,
    round_trips: Callable[[], int],
    server_cpu: Callable[[], float | None],
    prefix: str = "batch-",
) -> dict[str, Any]:
    """``rounds`` rounds each way over ``n`` locks (after one warm-up round each way)."""
    from celery_leader.aio import _Renewals

    assert isinstance(backend, RenewBatch)
    chunk = _Renewals.MAX_BATCH
    locks = [backend.lock(f"{prefix}{i}") for i in range(n)]
    now = time.time()
    record = LeaderRecord(holder="bench", lease_duration=15.0, acquire_time=now, renew_time=now, transitions=1)
    versions = [lock.create(record, 10.0) for lock in locks]
    runs: dict[str, list[dict[str, float]]] = {"one_by_one": [], "batched": []}
    load_before = os.getloadavg()
    for r in range(rounds + 1):
        for mode in ("one_by_one", "batched") if r % 2 == 0 else ("batched", "one_by_one"):
            renewed = record.evolve(renew_time=time.time())
            trips0, server0 = round_trips(), server_cpu()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if mode == "one_by_one":
                for i, lock in enumerate(locks):
                    versions[i] = lock.update(renewed, versions[i], 10.0)
            else:
                for start in range(0, n, chunk):
                    part = range(start, min(n, start + chunk))
                    out = backend.update_many([(locks[i], renewed, versions[i]) for i in part], 10.0)
                    for i, got in zip(part, out):
                        if not isinstance(got, str):
                            raise RuntimeError(f"a batched renewal failed: {got!r}")
                        versions[i] = got
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            trips, server1 = round_trips() - trips0, server_cpu()
            if r:
                runs[mode].append({
                    "client_cpu_us": cpu / n * 1e6,
                    "server_cpu_us": (server1 - server0) / n * 1e6 if server0 is not None and server1 is not None else float("nan"),
                    "round_trips": trips / n,
                    "wall_ms": wall * 1e3,
                })  # fmt: skip
    out: dict[str, Any] = {"n": n, "rounds": rounds, "batch_size": chunk, "loadavg_before": load_before, "loadavg": os.getloadavg()}
    for mode, rows in runs.items():
        # CPU and round trips: means over all rounds (the CPU clocks tick in 10 ms, a batched
        # round is a few of them); the wall time of a round: the median
        out[mode] = {key: statistics.fmean(row[key] for row in rows) for key in ("client_cpu_us", "server_cpu_us", "round_trips")}
        out[mode]["wall_ms"] = statistics.median(row["wall_ms"] for row in rows)
    one, bat = out["one_by_one"], out["batched"]
    out["client_cpu_ratio"] = bat["client_cpu_us"] / one["client_cpu_us"]
    out["server_cpu_ratio"] = bat["server_cpu_us"] / one["server_cpu_us"] if one["server_cpu_us"] else float("nan")
    return out


def markdown_table(data: dict[str, Any]) -> str:
    rows = []
    for label, key in (("one by one (`Lock.update`)", "one_by_one"), (f"batched (`update_many`, {data['batch_size']} per call)", "batched")):
        d = data[key]
        rows.append([label, d["client_cpu_us"], d["server_cpu_us"], d["round_trips"], d["wall_ms"]])
    return table(rows, ["renewals of " + f"{data['n']:,} elections", "client CPU µs / renewal", "server CPU µs / renewal",
                        "round trips / renewal", "ms per round"])  # fmt: skip


def splice(path: Path, title: str, text: str) -> None:
    """Put ``text`` (a section starting with ``title``) into the Markdown file ``path``,
    replacing the section of that title if there is one (up to the next ``## `` heading)."""
    doc = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = text.rstrip("\n") + "\n\n"
    doc = pattern.sub(lambda _: block, doc, count=1) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc.rstrip("\n") + "\n")
