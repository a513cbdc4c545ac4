"""What an idle standby costs: CPU of a process whose only election stands by while another
process leads, on each backend, at the default timing (15 s / 10 s / 2 s).

``python -m benchmarks standby [--backends file,redis,postgresql,etcd] [--window 20] [--driver thread,asyncio]``

The leader runs in this process (thread driver); the standby in a fresh interpreter that
does nothing else, so the CPU it reports (``time.process_time()``, all threads) over the
window is what standing by costs. Results go to ``benchmarks/results/standby.json`` and the
table to ``docs/bench-scale.md`` (between ``<!-- standby -->`` markers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import machine, table, write_results
from celery_leader import Election

NAME = "standby"
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "bench-scale.md"
MARK = "<!-- standby -->"


def child(url: str, name: str, window: float, driver: str) -> dict[str, Any]:
    """The standby process: stand by, wait until the leader is seen, then measure."""
    if driver == "asyncio":
        from celery_leader.aio import AsyncElection

        async def run() -> dict[str, Any]:
            e = AsyncElection(name, url=url, identity="standby")
            await e.start()
            t0 = time.monotonic()
            while e.leader != "leader" and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(window)
            out = {"cpu_s": time.process_time() - c0, "window_s": time.monotonic() - w0, "leader": e.leader,
                   "leading": e.is_leader}  # fmt: skip
            await e.stop()
            return out

        return asyncio.run(run())
    e = Election(name, url=url, identity="standby").start()
    t0 = time.monotonic()
    while e.leader != "leader" and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    time.sleep(3.0)
    c0, w0 = time.process_time(), time.monotonic()
    time.sleep(window)
    out = {"cpu_s": time.process_time() - c0, "window_s": time.monotonic() - w0, "leader": e.leader, "leading": e.is_leader}
    e.stop()
    return out


def measure(url: str, window: float, driver: str) -> dict[str, Any]:
    name = f"bench-standby-{uuid.uuid4().hex[:8]}"
    leader = Election(name, url=url, identity="leader").start()
    try:
        if not leader.wait_until_leader(30):
            raise RuntimeError(f"no leader on {url}")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", "standby", "--child", url, name, str(window), driver],
            cwd=ROOT, capture_output=True, text=True, timeout=window + 90, check=True,
        )  # fmt: skip
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        leader.stop()
    got["cpu_pct"] = 100.0 * got["cpu_s"] / got["window_s"]
    return got


@contextlib.contextmanager
def backend_url(kind: str) -> Iterator[str]:
    if kind == "file":
        with tempfile.TemporaryDirectory(prefix="bench-standby-") as d:
            yield f"file://{d}"
    elif kind == "redis":
        prefix = f"bench-standby-{uuid.uuid4().hex[:8]}:"
        yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
        import redis

        client = redis.Redis()
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    elif kind == "postgresql":
        from benchmarks.postgresql import database

        with database() as url:
            yield url
    elif kind == "etcd":
        from tests.etcd.conftest import EtcdCluster

        cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix="bench-standby-etcd-")), 1).start()
        try:
            yield cluster.url("/bench")
        finally:
            cluster.stop()
    else:
        raise SystemExit(f"unknown backend {kind!r}; choose from file, redis, postgresql, etcd")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks standby", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="file,redis,postgresql,etcd")
    parser.add_argument("--drivers", default="thread,asyncio")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, name, window, driver = args.child
        print(json.dumps(child(url, name, float(window), driver)))
        return 0
    rows, results = [], []
    load_before = os.getloadavg()[0]
    for kind in args.backends.split(","):
        with backend_url(kind) as url:
            for driver in args.drivers.split(","):
                print(f"{kind} ({driver}): standing by for {args.window:g} s ...", flush=True)
                r = measure(url, args.window, driver)
                r.update(backend=kind, driver=driver, loadavg_1min=os.getloadavg()[0])
                results.append(r)
                print(f"  {r['cpu_pct']:.3f} % of a core", flush=True)
                rows.append([kind, driver, f"{r['cpu_pct']:.3f}", f"{1000 * r['cpu_s']:.0f}", f"{r['window_s']:.0f}",
                             r["leader"], f"{r['loadavg_1min']:.1f}"])  # fmt: skip
    header = ["backend", "driver", "standby CPU % of a core", "CPU ms in window", "window s", "leader seen", "load avg (1 min)"]
    text = table(rows, header)
    print(text)
    if args.no_write:
        return 0
    m = machine()
    write_results(NAME, {"machine": m, "load_before": load_before, "runs": results, "command": "python -m benchmarks standby " + " ".join(argv)})
    section = "\n".join([
        MARK,
        "## An idle standby, per backend",
        "",
        f"Command: `python -m benchmarks standby {' '.join(argv)}`. One process leads (thread driver), another "
        "process does nothing but stand by for the same name at the default timing (15 s / 10 s / 2 s); its whole "
        f"CPU (all threads) over the window. Run {m.get('when', '?')}, load average {load_before:.1f} before.",
        "",
        text,
        MARK,
    ])  # fmt: skip
    existing = DOCS.read_text() if DOCS.exists() else ""
    if MARK in existing:
        head, _, rest = existing.partition(MARK)
        _, _, tail = rest.partition(MARK)
        DOCS.write_text(head + section + tail)
    else:
        DOCS.write_text(existing.rstrip() + "\n\n" + section + "\n")
    print(f"wrote {DOCS}")
    return 0
