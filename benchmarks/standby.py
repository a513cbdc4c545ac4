"""What an idle standby costs: CPU of a process whose only election stands by while another
process leads, on each backend, at the default timing (15 s / 10 s / 2 s).

``python -m benchmarks standby [--backends file,redis,...] [--window 60] [--drivers thread,asyncio]``

Backends: file, redis, postgresql, etcd, zookeeper, kubernetes (the tests' Lease API server,
bookmarks once a minute as a real API server sends them), s3 (moto server, which closes
the connection after every answer, so each poll also connects), s3-seaweedfs (SeaweedFS,
which keeps connections alive as AWS S3 does), git
(``git+file://``), gossip (three serf agents: the leader's, the standby's, and a third
whose acceptor runs in the leader's process; the standby's acceptor answers the leader's
renewals), django (``django://`` on PostgreSQL, LISTEN/NOTIFY). The servers run on 127.0.0.1.

The leader runs in this process (thread driver); the standby in a fresh interpreter that
does nothing else, so the CPU it reports (``time.process_time()``, all threads) over the
window is what standing by costs; "wakeups" are its voluntary context switches
(``getrusage``, all threads): how often some thread of it blocked and was woken again.
15 ms of CPU in 15 s is already 0.1 %, hence the 60 s default window. Results go to ``benchmarks/results/standby.json`` and the
table to ``docs/bench-scale.md`` (between ``<!-- standby -->`` markers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
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


def _usage() -> tuple[float, int, float | None]:
    """(CPU seconds, voluntary context switches) of this whole process, all threads, and the
    CPU seconds of its main thread alone (the asyncio driver's event loop; Linux only)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open(f"/proc/self/task/{threading.main_thread().native_id}/schedstat") as f:
            main = int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        main = None
    return time.process_time(), r.ru_nvcsw, main


def child(url: str, name: str, window: float, driver: str) -> dict[str, Any]:
    """The standby process: stand by, wait until the leader is seen, then measure."""

    def result(u0: tuple[float, int, float | None], w0: float, leader: str | None, leading: bool) -> dict[str, Any]:
        c1, s1, m1 = _usage()
        c0, s0, m0 = u0
        return {"cpu_s": c1 - c0, "window_s": time.monotonic() - w0, "wakeups": s1 - s0, "leader": leader,
                "leading": leading, "main_thread_cpu_s": None if m0 is None or m1 is None else m1 - m0}  # fmt: skip

    if driver == "asyncio":
        from celery_leader.aio import AsyncElection

        async def run() -> dict[str, Any]:
            e = AsyncElection(name, url=url, identity="standby")
            await e.start()
            t0 = time.monotonic()
            while e.leader != "leader" and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)
            u0, w0 = _usage(), time.monotonic()
            await asyncio.sleep(window)
            out = result(u0, w0, e.leader, e.is_leader)
            await e.stop()
            return out

        return asyncio.run(run())
    e = Election(name, url=url, identity="standby").start()
    t0 = time.monotonic()
    while e.leader != "leader" and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    time.sleep(3.0)
    u0, w0 = _usage(), time.monotonic()
    time.sleep(window)
    out = result(u0, w0, e.leader, e.is_leader)
    e.stop()
    return out


def measure(leader_url: str, standby_url: str, window: float, driver: str) -> dict[str, Any]:
    name = f"bench-standby-{uuid.uuid4().hex[:8]}"
    leader = Election(name, url=leader_url, identity="leader").start()
    try:
        if not leader.wait_until_leader(30):
            raise RuntimeError(f"no leader on {kind_of(leader_url)}")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", "standby", "--child", standby_url, name, str(window), driver],
            cwd=ROOT, capture_output=True, text=True, timeout=window + 90,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the standby process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        leader.stop()
    got["cpu_pct"] = 100.0 * got["cpu_s"] / got["window_s"]
    got["cpu_ms_per_min"] = 60_000.0 * got["cpu_s"] / got["window_s"]
    got["wakeups_per_min"] = 60.0 * got["wakeups"] / got["window_s"]
    main = got.get("main_thread_cpu_s")
    got["main_thread_ms_per_min"] = None if main is None else 60_000.0 * main / got["window_s"]
    return got


def kind_of(url: str) -> str:
    return url.split(":", 1)[0]


BACKENDS = ("file", "redis", "postgresql", "etcd", "zookeeper", "kubernetes", "s3", "s3-seaweedfs", "git", "gossip", "django")


@contextlib.contextmanager
def backend_urls(kind: str) -> Iterator[tuple[str, str]]:
    """(the leader's URL, the standby's URL) of a private server or store for ``kind``."""
    if kind == "file":
        with tempfile.TemporaryDirectory(prefix="bench-standby-") as d:
            yield f"file://{d}", f"file://{d}"
    elif kind == "redis":
        prefix = f"bench-standby-{uuid.uuid4().hex[:8]}:"
        url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
        yield url, url
        import redis

        client = redis.Redis()
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    elif kind == "postgresql":
        from benchmarks.postgresql import database

        with database() as url:
            yield url, url
    elif kind == "etcd":
        from tests.etcd.conftest import EtcdCluster

        cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix="bench-standby-etcd-")), 1).start()
        try:
            yield cluster.url("/bench"), cluster.url("/bench")
        finally:
            cluster.stop()
    elif kind == "zookeeper":
        from tests.zookeeper.conftest import ZooKeeper

        workdir = Path(tempfile.mkdtemp(prefix="bench-standby-zk-"))
        zk = ZooKeeper(workdir, 1).start()
        try:
            yield zk.url("/bench"), zk.url("/bench")
        finally:
            zk.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    elif kind == "kubernetes":
        from tests.kubernetes.apiserver import LeaseAPIServer

        # a real API server sends a watch bookmark about once a minute; the tests' server every
        # second by default (so that their watches see one quickly)
        server = LeaseAPIServer(namespaces=("bench",), bookmark_interval=60.0).start()
        with tempfile.TemporaryDirectory(prefix="bench-standby-k8s-") as d:
            kubeconfig = server.write_kubeconfig(Path(d) / "kubeconfig", namespace="bench")
            try:
                url = f"kubernetes://bench?kubeconfig={kubeconfig}"
                yield url, url
            finally:
                server.stop()
    elif kind in ("s3", "s3-seaweedfs"):
        from benchmarks.s3 import server

        # moto's server answers every request with "Connection: close", so each poll there
        # also opens a TCP connection; SeaweedFS keeps connections alive, as AWS S3 does
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log
        with server("moto" if kind == "s3" else "seaweedfs") as s3:
            url = s3.url(f"bench-standby-{uuid.uuid4().hex[:8]}")
            yield url, url
    elif kind == "git":
        with tempfile.TemporaryDirectory(prefix="bench-standby-git-") as d:
            repo = Path(d) / "locks.git"
            subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
            yield f"git+file://{repo}", f"git+file://{repo}"
    elif kind == "gossip":
        from celery_leader.backends.gossip import GossipBackend
        from tests.gossip.cluster import SerfCluster

        # three members: the leader's node, the standby's, and a third whose acceptor runs in
        # this process (so that the leader has a quorum before the standby starts); the
        # standby's acceptor answers the leader's renewals: part of what standing by costs here
        with tempfile.TemporaryDirectory(prefix="bench-standby-gossip-") as d, \
                SerfCluster(3, Path(d) / "serf", prefix="s") as serf:  # fmt: skip
            a, b, c = serf.agents
            third = GossipBackend.from_url(c.url(serf.names, Path(d) / "state-c"))
            try:
                yield a.url(serf.names, Path(d) / "state-a"), b.url(serf.names, Path(d) / "state-b")
            finally:
                third.close()
    elif kind == "django":
        with django_postgresql() as url:
            yield url, url
    else:
        raise SystemExit(f"unknown backend {kind!r}; choose from {', '.join(BACKENDS)}")


@contextlib.contextmanager
def django_postgresql() -> Iterator[str]:
    """``django://pg``: the tests' Django settings on a throwaway PostgreSQL database (the
    environment variables are inherited by the standby process, which sets Django up itself)."""
    import psycopg

    db = f"django_leader_bench_{uuid.uuid4().hex[:8]}"
    tmp = tempfile.mkdtemp(prefix="bench-standby-django-")
    os.environ.update(DJANGO_SETTINGS_MODULE="tests.django.settings", DJANGO_LEADER_TEST_DB=db,
                      DJANGO_LEADER_TEST_SQLITE=os.path.join(tmp, "db.sqlite3"))  # fmt: skip
    admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{db}"')
    try:
        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        call_command("migrate", "django_leader", verbosity=0, database="pg")
        connections["pg"].close()
        yield "django://pg"
    finally:
        from django.db import connections

        connections.close_all()
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks standby", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--drivers", default="thread,asyncio")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, name, window, driver = args.child
        print(json.dumps(child(url, name, float(window), driver)))
        return 0
    rows, results = [], []
    load_before = os.getloadavg()[0]
    m = machine()  # before Django's settings set the process's TZ (its default TIME_ZONE)
    for kind in args.backends.split(","):
        with backend_urls(kind) as (leader_url, standby_url):
            for driver in args.drivers.split(","):
                print(f"{kind} ({driver}): standing by for {args.window:g} s ...", flush=True)
                r = measure(leader_url, standby_url, args.window, driver)
                r.update(backend=kind, driver=driver, loadavg_1min=os.getloadavg()[0])
                results.append(r)
                main = r["main_thread_ms_per_min"]
                print(f"  {r['cpu_pct']:.3f} % of a core, {r['cpu_ms_per_min']:.0f} ms/min "
                      f"(main thread {'-' if main is None else f'{main:.1f}'}), "
                      f"{r['wakeups_per_min']:.0f} wakeups/min", flush=True)  # fmt: skip
                rows.append([kind, driver, f"{r['cpu_pct']:.3f}", f"{r['cpu_ms_per_min']:.0f}",
                             "-" if main is None else f"{main:.1f}", f"{1000 * r['cpu_s']:.0f}",
                             f"{r['window_s']:.0f}", f"{r['wakeups_per_min']:.0f}", r["leader"],
                             f"{r['loadavg_1min']:.1f}"])  # fmt: skip
    header = ["backend", "driver", "standby CPU % of a core", "CPU ms per min", "of which main thread (ms/min)",
              "CPU ms in window", "window s", "wakeups per min", "leader seen", "load avg (1 min)"]  # fmt: skip
    text = table(rows, header)
    print(text)
    if args.no_write:
        return 0
    write_results(NAME, {"machine": m, "load_before": load_before, "runs": results, "command": "python -m benchmarks standby " + " ".join(argv)})
    section = "\n".join([
        MARK,
        "## An idle standby, per backend",
        "",
        f"Command: `{' '.join(['python -m benchmarks standby', *argv])}`. One process leads (thread driver), another "
        "process does nothing but stand by for the same name at the default timing (15 s / 10 s / 2 s); its whole "
        "CPU (all threads) over the window, the part of it spent on its main thread (the asyncio driver's event "
        "loop; with the thread driver the main thread only sleeps), and its voluntary context switches (wakeups). "
        "Servers on 127.0.0.1: "
        "kubernetes is the tests' Lease API server (a watch bookmark a minute), s3 moto (a new connection per request: moto closes each), s3-seaweedfs SeaweedFS (kept connections, as AWS S3), git `git+file://`, gossip "
        "three serf agents (the standby's acceptor answers each renewal), django `django://` on PostgreSQL. "
        f"Run {m.get('when', '?')}, load average {load_before:.1f} before.",
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
