"""gossip:// latency and crash takeover on real serf agents (``-profile=local``) on 127.0.0.1.

``python -m benchmarks gossip [--rounds N] [--trials K]`` measures, for 3 and 5 members:

* acquire: ``create`` of a fresh lock (prepare + accept: two query rounds);
* renew: ``update`` by the last writer (the one-round-trip accept);
* takeover after a failed renewal path: ``update`` by another candidate (prepare + accept);
* read: ``get`` (one round that promises nothing);
* crash takeover: ``celery-leader run`` on every member, SIGKILL the leader's agent and
  candidate, time until another child starts leading, relative to the lease.

Writes ``benchmarks/results/gossip.json``; the Markdown table goes to docs/bench-gossip.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import summary, table, write_results

LEASE, RENEW, RETRY = 3.0, 2.0, 0.5


def _latencies(n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from celery_leader.backends.gossip import GossipBackend
    from celery_leader.testing import sample_record
    from tests.gossip.cluster import SerfCluster

    out: dict[str, list[float]] = {"acquire": [], "renew": [], "update_by_other": [], "read": []}
    failures = 0
    with SerfCluster(n, workdir / f"serf{n}", prefix=f"b{n}-") as serf:
        backends = [GossipBackend.from_url(a.url(serf.names, workdir / f"state{n}" / a.name)) for a in serf.agents]
        try:
            mine, other = backends[0], backends[-1]
            for _ in range(rounds):
                lock = mine.lock("bench-" + uuid.uuid4().hex[:8])
                t = time.perf_counter()
                version = lock.create(sample_record(), 5.0)
                out["acquire"].append(time.perf_counter() - t)
            lock = mine.lock("bench-renew")
            version = lock.create(sample_record(), 5.0)
            for _ in range(rounds):
                t = time.perf_counter()
                version = lock.update(sample_record(), version, 5.0)
                out["renew"].append(time.perf_counter() - t)
            peer = other.lock("bench-renew")
            for _ in range(rounds):
                t = time.perf_counter()
                got = peer.get(5.0)
                out["read"].append(time.perf_counter() - t)
                assert got is not None
            for i in range(rounds):
                # alternate writers, so every write is a full prepare + accept
                writer = (peer, lock)[i % 2]
                t = time.perf_counter()
                try:
                    version = writer.update(sample_record(transitions=i), version, 5.0)
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    failures += 1
                    got = writer.get(5.0)
                    version = got.version if got else version
                    continue
                out["update_by_other"].append(time.perf_counter() - t)
        finally:
            for b in backends:
                b.close()
    return {"summary": {k: summary(v) for k, v in out.items()}, "failures": failures}


def _takeover(n: int, trials: int, workdir: Path, timing: tuple[float, float, float] = (LEASE, RENEW, RETRY)
              ) -> dict[str, Any]:
    from tests.gossip.cluster import GossipElectors, SerfCluster

    lease, renew, retry = timing
    times: list[float] = []
    tag = f"{n}-{lease:g}"
    with SerfCluster(n, workdir / f"serf-t{tag}", prefix=f"t{n}-") as serf, GossipElectors(
        serf, "bench", workdir / f"run{tag}", lease_duration=lease, renew_deadline=renew, retry_period=retry
    ) as cluster:
        for _ in range(trials):
            i = cluster.wait_for_leader(timeout=60)
            time.sleep(1.0)
            killed = time.time()
            serf.agents[i].signal(signal.SIGKILL)
            cluster.kill(i)
            j = cluster.wait_for_leader(timeout=60, exclude={i})
            started = max(iv.start for iv in cluster.intervals() if iv.node == cluster.identity(j))
            times.append(started - killed)
            serf.agents[i].proc.wait(10)  # type: ignore[union-attr]
            serf.restart(i)
            cluster.restart(i)
            serf.wait_alive(range(n), timeout=20)
    report = cluster.check()
    report.assert_safe()
    return {"timing": list(timing), "seconds": summary(times), "lease_ratio": summary([t / lease for t in times]),
            "raw": times, "terms": len(report.intervals), "overlaps": len(report.overlaps)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gossip")
    parser.add_argument("--rounds", type=int, default=50, help="calls per latency measurement")
    parser.add_argument("--trials", type=int, default=4, help="crash takeovers per member count")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"lease": [LEASE, RENEW, RETRY], "rounds": args.rounds, "trials": args.trials}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        for n in (3, 5):
            lat = _latencies(n, args.rounds, Path(tmp))
            take = _takeover(n, args.trials, Path(tmp))
            results[f"members_{n}"] = {"latency": lat, "takeover": take}
            s = lat["summary"]
            for op in ("acquire", "renew", "read", "update_by_other"):
                rows.append([n, op, s[op]["p50"] * 1000, s[op]["p99"] * 1000, s[op]["max"] * 1000])
            t = take["seconds"]
            rows.append([n, f"crash takeover (lease {LEASE:g} s)", t["p50"] * 1000, t["p99"] * 1000, t["max"] * 1000])
            # a roomier call budget (renew_deadline / 2 = 2 s): fewer acquisitions time out
            roomy = _takeover(n, args.trials, Path(tmp), (6.0, 4.0, 1.0))
            results[f"members_{n}"]["takeover_lease6"] = roomy
            t = roomy["seconds"]
            rows.append([n, "crash takeover (lease 6 s)", t["p50"] * 1000, t["p99"] * 1000, t["max"] * 1000])
    path = write_results("gossip", results)
    print(table(rows, ["members", "operation", "p50 ms", "p99 ms", "max ms"]))
    print(f"\nwritten to {path}", file=sys.stderr)
    return 0
