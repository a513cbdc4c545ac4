"""Kubernetes Lease backend: renew latency against the raw client's replace call, and
graceful handover through the watch.

``python -m benchmarks kubernetes [--renewals N] [--handovers N]``

The in-test Lease API server (``tests/kubernetes/apiserver.py``) runs in its own process
on 127.0.0.1, so that its work does not share the benchmark's interpreter lock.
Writes ``benchmarks/results/kubernetes.json`` and ``docs/bench-kubernetes.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ._common import summary, table, write_results

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bench-kubernetes.md"
NAMESPACE = "bench"


def _start_server(workdir: Path) -> tuple[subprocess.Popen, Path]:
    kubeconfig = workdir / "kubeconfig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kubernetes.apiserver", "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"the Lease API server did not start: {line!r}")
    return proc, kubeconfig


def _renew_latency(url: str, n: int) -> dict[str, object]:
    """Our renew (update with the version of our last write) vs CoordinationV1Api.replace_namespaced_lease."""
    from kubernetes import client as k8s_client

    from celery_leader.backends.kubernetes import KubernetesBackend
    from celery_leader.record import LeaderRecord

    backend = KubernetesBackend.from_url(url)
    ours_lock = backend.lock("renew-ours")
    now = time.time()
    record = LeaderRecord(holder="bench", lease_duration=15, acquire_time=now, renew_time=now, transitions=1)
    version = ours_lock.create(record, 5.0)
    api = k8s_client.CoordinationV1Api(backend.api_client)
    body = k8s_client.V1Lease(
        metadata=k8s_client.V1ObjectMeta(name="renew-raw"),
        spec=k8s_client.V1LeaseSpec(holder_identity="bench", lease_duration_seconds=15, lease_transitions=1),
    )
    raw_lease = api.create_namespaced_lease(NAMESPACE, body)
    ours: list[float] = []
    raw: list[float] = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        version = ours_lock.update(record.evolve(renew_time=time.time()), version, 2.0)
        t1 = time.perf_counter()
        stamp = dt.datetime.now(dt.timezone.utc)
        # the raw client drops the fraction of a datetime whose microsecond is 0: the server would refuse it
        raw_lease.spec.renew_time = stamp.replace(microsecond=stamp.microsecond or 1)
        t2 = time.perf_counter()
        raw_lease = api.replace_namespaced_lease("renew-raw", NAMESPACE, raw_lease, _request_timeout=2.0)
        t3 = time.perf_counter()
        if i >= 20:  # warm-up
            ours.append((t1 - t0) * 1000)
            raw.append((t3 - t2) * 1000)
    backend.close()
    s_ours, s_raw = summary(ours), summary(raw)
    return {"ours_ms": s_ours, "raw_replace_ms": s_raw, "ratio_p50": s_ours["p50"] / s_raw["p50"], "ratio_p99": s_ours["p99"] / s_raw["p99"]}


def _handover(url: str, n: int) -> dict[str, object]:
    """Leader stops (releases); time until the follower's on_started_leading runs."""
    from celery_leader.election import Election

    started: dict[str, float] = {}
    lock = threading.Lock()

    def make(identity: str) -> Election:
        def on_start(_lead: object) -> None:
            with lock:
                started[identity] = time.perf_counter()

        return Election(
            "handover",
            url=url,
            identity=identity,
            lease_duration=5.0,
            renew_deadline=3.0,
            retry_period=2.0,
            on_started_leading=on_start,
        )

    sides = {"a": make("a").start()}
    if not sides["a"].wait_until_leader(20):
        raise SystemExit("no first leader")
    sides["b"] = make("b").start()
    from_stop: list[float] = []
    from_release: list[float] = []
    leader, follower = "a", "b"
    for _ in range(n):
        time.sleep(0.3)  # the follower is inside its watch
        with lock:
            started.pop(follower, None)
        t0 = time.perf_counter()
        sides[leader].stop()
        t1 = time.perf_counter()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if follower in started:
                    break
            time.sleep(0.0005)
        with lock:
            took = started.get(follower)
        if took is None:
            raise SystemExit("handover did not happen")
        from_stop.append((took - t0) * 1000)
        from_release.append((took - t1) * 1000)
        sides[leader] = make(leader).start()
        leader, follower = follower, leader
    for e in sides.values():
        e.stop()
    return {"stop_to_new_leader_ms": summary(from_stop), "release_done_to_new_leader_ms": summary(from_release)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks kubernetes")
    parser.add_argument("--renewals", type=int, default=500)
    parser.add_argument("--handovers", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proc, kubeconfig = _start_server(Path(tmp))
        try:
            url = f"kubernetes://{NAMESPACE}?kubeconfig={kubeconfig}"
            renew = _renew_latency(url, args.renewals)
            handover = _handover(url, args.handovers)
        finally:
            proc.terminate()
            proc.wait(10)
    command = "python -m benchmarks kubernetes" + (" " + " ".join(argv) if argv else "")
    path = write_results("kubernetes", {"command": command, "renew": renew, "handover": handover})
    rows = [
        ["renew: KubernetesLock.update", renew["ours_ms"]["n"], renew["ours_ms"]["p50"], renew["ours_ms"]["p99"], renew["ours_ms"]["mean"]],
        ["renew: raw replace_namespaced_lease", renew["raw_replace_ms"]["n"], renew["raw_replace_ms"]["p50"], renew["raw_replace_ms"]["p99"], renew["raw_replace_ms"]["mean"]],
        ["handover: leader stop() -> follower leads", handover["stop_to_new_leader_ms"]["n"], handover["stop_to_new_leader_ms"]["p50"], handover["stop_to_new_leader_ms"]["p99"], handover["stop_to_new_leader_ms"]["mean"]],
        ["handover: release written -> follower leads", handover["release_done_to_new_leader_ms"]["n"], handover["release_done_to_new_leader_ms"]["p50"], handover["release_done_to_new_leader_ms"]["p99"], handover["release_done_to_new_leader_ms"]["mean"]],
    ]
    md = table(rows, ["measurement (ms)", "n", "p50", "p99", "mean"])
    print(md)
    print(f"renew ratio ours/raw: p50 {renew['ratio_p50']:.2f}, p99 {renew['ratio_p99']:.2f}")
    print(f"results: {path}")
    return 0
