"""Fault injection: does it ever give two leaders, and how long is there none?

``python -m benchmarks chaos [--backend file|redis|postgresql|etcd|zookeeper] [--duration S] [--seed N] [-n N]``

N candidates run through ``celery-leader run`` (their child logs each term with its
token). Faults are injected at random, one at a time, each followed by recovery:

* ``kill``: SIGKILL the leader's ``run`` (its child dies with it); restarted later;
* ``term``: SIGTERM the leader (graceful release); restarted later;
* ``pause``: SIGSTOP the leader and its child past the lease, then SIGCONT;
* ``server``: the backend server killed and restarted (Redis, with AOF fsync always);
* ``sessions``: every session of the candidates' database ended by ``pg_terminate_backend``
  (PostgreSQL: the shared server is not ours to kill; this is what a restart, a failover
  or an idle-session reaper does to the clients);
* ``member``: one of three etcd members / ZooKeeper servers killed (sometimes the one
  ordering the writes, sometimes the leader's own) and restarted after 0.5-3 leases; each
  candidate reaches one member through its own proxy;
* ``blackhole``: the leader's own connections to the backend silently dropped (a TCP
  proxy per candidate holds every byte) for longer than the lease, while the others
  still reach the backend: the leader must stop by its deadline, a follower take over;
* ``delay``: the leader's connections delayed by a fraction of the retry period.

The checker (:mod:`celery_leader.testing.cluster`) reports overlapping terms and token
regressions (target 0) and, for each fault, the time without any leader against the bound
the design promises. A bounded run is part of the test suite (tests/chaos).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from benchmarks._common import summary, table, write_results
from benchmarks.tcpproxy import TcpProxy
from celery_leader.testing.cluster import ElectorCluster, Interval, Report

#: startup of a new child process, scheduling noise: added to every bound
SLACK = 1.5
BACKENDS = ["file", "redis", "postgresql", "etcd", "zookeeper"]


@dataclass
class Fault:
    kind: str
    node: int
    at: float  # wall time of injection
    detail: float = 0.0  # pause / outage length
    bound: float | None = None  # promised maximum time without a leader (None: no promise)
    leaderless: float = 0.0  # measured

    @property
    def within_bound(self) -> bool:
        return self.bound is None or self.leaderless <= self.bound


@dataclass
class ChaosResult:
    backend: str
    seed: int
    faults: list[Fault]
    report: Report
    timing: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[Fault]:
        return [f for f in self.faults if not f.within_bound]

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "seed": self.seed,
            "timing": self.timing,
            "terms": len(self.report.intervals),
            "overlaps": len(self.report.overlaps),
            "token_regressions": len(self.report.token_regressions),
            "faults": [asdict(f) | {"within_bound": f.within_bound} for f in self.faults],
        }


class RedisServer:
    """A private redis-server that the harness can kill and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        from tests.servers import free_port

        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from tests.servers import wait_for_port

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not wait_for_port(self.port, 10):
            raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


class PgDatabase:
    """A throwaway database on the PostgreSQL at 127.0.0.1:5432, dropped afterwards."""

    def __init__(self) -> None:
        import uuid

        import psycopg

        self.name = f"celery_leader_chaos_{uuid.uuid4().hex[:8]}"
        self._admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
        self._admin.execute(f'CREATE DATABASE "{self.name}"')

    def terminate_sessions(self) -> int:
        row = self._admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [self.name]
        ).fetchone()
        return int(row[0]) if row else 0

    def drop(self) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.close()


def _leaderless_after(fault: Fault, intervals: list[Interval], end_of_run: float) -> float:
    """Seconds from the fault until a leader ran again (0 if leadership was not interrupted)."""
    t = fault.at
    current = [iv for iv in intervals if iv.start <= t <= iv.end]
    if current and all(iv.effective_end >= min(t + fault.detail + 0.5, end_of_run) for iv in current):
        later = [iv for iv in intervals if iv.start > t]
        if not later or later[0].start > current[0].effective_end:
            # the same term survived the fault
            return 0.0
    ended = max((iv.effective_end for iv in current), default=t)
    later = [iv.start for iv in intervals if iv.start >= max(t, ended - 1e-3)]
    return (min(later) if later else end_of_run) - t


class Ensemble:
    """Three etcd members or three ZooKeeper servers (private processes) for the ``member`` fault."""

    #: extra seconds without a leader that a consensus election may add when the killed
    #: member was the one ordering writes (etcd: raft, 250 ms election timeout; ZooKeeper:
    #: ZAB, every server drops its clients until a new leader has synced the others)
    ELECTION = {"etcd": 1.0, "zookeeper": 4.0}

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        if kind == "etcd":
            from tests.etcd.conftest import EtcdCluster

            self.cluster: Any = EtcdCluster(workdir / "etcd", 3).start()
        else:
            from tests.zookeeper.conftest import ZooKeeper

            self.cluster = ZooKeeper(workdir / "zookeeper", 3).start()
        self.client_ports = self.cluster.client_ports
        self.election = self.ELECTION[kind]

    def url_through(self, port: int) -> str:
        if self.kind == "etcd":
            return f"etcd://127.0.0.1:{port}/chaos"
        return f"zookeeper://127.0.0.1:{port}/chaos?session_timeout=2"

    def kill(self, i: int) -> None:
        self.cluster.kill(i)

    def restart(self, i: int) -> None:
        self.cluster.start_member(i)

    def stop(self) -> None:
        self.cluster.stop()


@contextlib.contextmanager
def _environment(
    backend: str, workdir: Path, n: int
) -> Iterator[tuple[list[str], RedisServer | PgDatabase | Ensemble | None, list[TcpProxy]]]:
    if backend == "file":
        d = workdir / "locks"
        d.mkdir()
        yield ["file://" + str(d)] * n, None, []
        return
    if backend == "redis":
        server = RedisServer(workdir)
        server.start()
        proxies = [TcpProxy(server.port) for _ in range(n)]
        try:
            yield [f"redis://127.0.0.1:{p.port}/0" for p in proxies], server, proxies
        finally:
            for p in proxies:
                p.close()
            server.kill()
        return
    if backend == "postgresql":
        database = PgDatabase()
        proxies = [TcpProxy(5432) for _ in range(n)]
        try:
            yield [f"postgresql://postgres@127.0.0.1:{p.port}/{database.name}" for p in proxies], database, proxies
        finally:
            for p in proxies:
                p.close()
            database.drop()
        return
    if backend in ("etcd", "zookeeper"):
        ensemble = Ensemble(backend, workdir)
        # candidate i reaches only member i (through its own proxy): a member killed or a
        # proxy black-holed cuts one candidate off while the others keep a quorum
        proxies = [TcpProxy(ensemble.client_ports[i % 3]) for i in range(n)]
        try:
            yield [ensemble.url_through(p.port) for p in proxies], ensemble, proxies
        finally:
            for p in proxies:
                p.close()
            ensemble.stop()
        return
    raise SystemExit(f"unknown backend {backend!r}: choose {', '.join(BACKENDS)}")


def run_chaos(
    backend: str = "file",
    duration: float = 60.0,
    seed: int | None = None,
    n: int = 3,
    lease: float = 1.0,
    renew: float = 0.6,
    retry: float = 0.2,
    workdir: Path | None = None,
    kinds: tuple[str, ...] | None = None,
) -> ChaosResult:
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="celery-leader-chaos-")) if workdir is None else workdir
    allowed = ["kill", "term", "pause"] + {
        "redis": ["server", "blackhole", "delay"],
        "postgresql": ["sessions", "blackhole", "delay"],
        "etcd": ["member", "blackhole", "delay"],
        "zookeeper": ["member", "blackhole", "delay"],
    }.get(backend, [])
    if kinds:
        allowed = [k for k in allowed if k in kinds]
    poll = retry * 1.2
    faults: list[Fault] = []
    with _environment(backend, workdir, n) as (urls, server, proxies):
        cluster = ElectorCluster(urls, "chaos", n, workdir=workdir / "nodes", lease_duration=lease,
                                 renew_deadline=renew, retry_period=retry, grace=lease)  # fmt: skip
        with cluster:
            cluster.wait_for_leader(timeout=30)
            started = time.monotonic()
            while time.monotonic() - started < duration:
                leader = cluster.wait_for_leader(timeout=60)
                kind = rng.choice(allowed)
                fault = Fault(kind, leader, time.time())
                if kind == "kill":
                    fault.bound = lease + poll + SLACK
                    cluster.kill(leader)
                    cluster.wait_for_leader(timeout=60, exclude={leader})
                    cluster.restart(leader)
                elif kind == "term":
                    fault.bound = poll + SLACK
                    cluster.terminate(leader)
                    cluster.wait_for_leader(timeout=60, exclude={leader})
                    cluster.wait_exit(leader)
                    cluster.restart(leader)
                elif kind == "pause":
                    fault.detail = lease * rng.uniform(1.5, 3.0)
                    fault.bound = lease + poll + SLACK
                    cluster.pause(leader, fault.detail)
                elif kind == "sessions":
                    assert isinstance(server, PgDatabase)
                    # the pools retry once on a fresh connection: leadership should survive
                    fault.bound = lease + poll + SLACK
                    server.terminate_sessions()
                    time.sleep(lease)
                elif kind == "server":
                    assert isinstance(server, RedisServer)
                    fault.detail = rng.uniform(0.2, 2.0) * lease
                    fault.bound = fault.detail + lease + poll + SLACK
                    server.kill()
                    time.sleep(fault.detail)
                    server.start()
                elif kind == "member":
                    assert isinstance(server, Ensemble)
                    # one of three members killed, restarted after a while; the quorum remains
                    member = rng.randrange(3)
                    fault.detail = rng.uniform(0.5, 3.0) * lease
                    fault.bound = lease + poll + SLACK + server.election
                    server.kill(member)
                    time.sleep(fault.detail)
                    server.restart(member)
                elif kind == "blackhole":
                    fault.detail = lease * rng.uniform(1.5, 3.0)
                    fault.bound = lease + poll + SLACK
                    proxies[leader].set_mode("blackhole")
                    time.sleep(fault.detail)
                    proxies[leader].set_mode("reset")
                    proxies[leader].set_mode("pass")
                elif kind == "delay":
                    fault.detail = retry * rng.uniform(0.1, 0.5)
                    proxies[leader].set_mode("delay", fault.detail)
                    time.sleep(lease * 2)
                    proxies[leader].set_mode("pass")
                faults.append(fault)
                time.sleep(rng.uniform(0.2, 1.0))
            end_of_run = time.time()
        report = cluster.check()
    intervals = report.intervals
    for fault in faults:
        fault.leaderless = _leaderless_after(fault, intervals, end_of_run)
    result = ChaosResult(backend, seed, faults, report, (lease, renew, retry))
    if own_dir:
        if report.safe and not result.violations:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            result.notes.append(f"logs kept in {workdir}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default all")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults per backend")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-n", type=int, default=3, help="candidates")
    args = parser.parse_args(argv)
    results = []
    for backend in args.backend or BACKENDS:
        result = run_chaos(backend, args.duration, args.seed, args.n)
        results.append(result)
        rows = []
        for kind in sorted({f.kind for f in result.faults}):
            gaps = [f.leaderless for f in result.faults if f.kind == kind]
            bounds = [f.bound for f in result.faults if f.kind == kind and f.bound is not None]
            s = summary(gaps)
            rows.append([kind, s["n"], s["p50"], s["max"], max(bounds) if bounds else "-",
                         sum(not f.within_bound for f in result.faults if f.kind == kind)])  # fmt: skip
        print(f"\n## chaos: {backend} (seed {result.seed}, {len(result.report.intervals)} terms, "
              f"{len(result.report.overlaps)} overlaps, {len(result.report.token_regressions)} token regressions)")  # fmt: skip
        print(table(rows, ["fault", "n", "leaderless p50 s", "leaderless max s", "bound s", "over bound"]))
        for note in result.notes:
            print(note)
    write_results("chaos", {"runs": [r.as_dict() for r in results]})
    return 0 if all(r.report.safe and not r.violations for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
