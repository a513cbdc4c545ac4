"""Peers on Kubernetes: the official client's leader election next to ours, on one Lease API.

``python -m benchmarks peers_kubernetes [--runs 3] [--quick]``

Both tools talk to the in-test Lease API server (``tests/kubernetes/apiserver.py``, run as
its own process on 127.0.0.1, as ``benchmarks/kubernetes.py`` does) through the official
``kubernetes`` client:

* ``kubernetes-client``: :mod:`kubernetes.leaderelection` with its ``LeaseLock``
  (``LeaderElection(Config(...)).run()``), whose ``onstarted_leading`` logs the moment;
* ``celery-leader``: :class:`celery_leader.Election` on ``kubernetes://NAMESPACE``, stopping
  (and so releasing) on SIGTERM as the CLI does.

Each run starts a leader process, then a standby process, lets the standby observe the
Lease, then sends SIGKILL or SIGTERM to the leader and measures, from the signal, the time
until the standby logs that it leads. Profiles: ``default`` (ours: client-go's 15/10/2 s;
the official client has no defaults, so the values of its own example, 17/15/5 s),
``matched`` (3/2/1 s for both: the official client refuses a retry period or renew
deadline under 1 s) and ``short`` (ours only, 1/0.6/0.2 s, the timing of our tests).

Writes ``benchmarks/results/peers_kubernetes.json``; the table goes into
``docs/bench-scale.md`` (section "Peers on Kubernetes").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import summary, table, write_results
from benchmarks.kubernetes import NAMESPACE, _start_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "bench-scale.md"
PROFILES: dict[str, dict[str, tuple[float, float, float]]] = {
    "default": {"kubernetes-client": (17.0, 15.0, 5.0), "celery-leader": (15.0, 10.0, 2.0)},
    "matched": {"kubernetes-client": (3.0, 2.0, 1.0), "celery-leader": (3.0, 2.0, 1.0)},
    "short": {"celery-leader": (1.0, 0.6, 0.2)},
}
MARK = "<!-- peers_kubernetes -->"


# --- the candidate processes --------------------------------------------------------------------


def _logger(path: str, identity: str) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(event: str, extra: str = "") -> None:
        os.write(fd, f"{time.time():.6f} {identity} {event} {extra}\n".encode())

    return log


def candidate(argv: list[str]) -> int:
    """One candidate process (run by the benchmark, not by hand)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tool", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--timing", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    lease, renew, retry = (float(x) for x in args.timing.split(","))
    log = _logger(args.log, args.identity)
    if args.tool == "kubernetes-client":
        from kubernetes import config
        from kubernetes.leaderelection import electionconfig, leaderelection
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        config.load_kube_config(config_file=args.kubeconfig)
        lock = LeaseLock(args.name, NAMESPACE, args.identity)

        def started() -> None:
            log("LEAD")
            threading.Event().wait()

        cfg = electionconfig.Config(
            lock,
            lease_duration=int(lease),
            renew_deadline=int(renew),
            retry_period=int(retry),
            onstarted_leading=started,
            onstopped_leading=lambda: log("STOP"),
        )
        log("READY")
        leaderelection.LeaderElection(cfg).run()
        return 0
    from celery_leader import Election

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    election = Election(
        args.name,
        url=f"kubernetes://{NAMESPACE}?kubeconfig={args.kubeconfig}",
        identity=args.identity,
        lease_duration=lease,
        renew_deadline=renew,
        retry_period=retry,
        on_started_leading=lambda lead: log("LEAD", str(lead.token)),
        on_stopped_leading=lambda: log("STOP"),
    )
    election.start()
    log("READY")
    stop.wait()
    election.stop()
    log("EXIT")
    return 0


# --- the benchmark ------------------------------------------------------------------------------


def _events(path: Path) -> list[tuple[float, str, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((float(parts[0]), parts[1], parts[2]))
    return out


def _wait_for(path: Path, identity: str, event: str, timeout: float, after: float = 0.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for when, who, what in _events(path):
            if who == identity and what == event and when >= after:
                return when
        time.sleep(0.01)
    return None


def one_run(
    tool: str, timing: tuple[float, float, float], sig: signal.Signals, kubeconfig: Path, workdir: Path, tag: str
) -> dict[str, Any]:
    lease, renew, retry = timing
    name = f"peer-{tag}"
    log = workdir / f"{tag}.log"

    def spawn(identity: str) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable, "-m", "benchmarks", "peers_kubernetes", "--candidate",
            "--tool", tool, "--kubeconfig", str(kubeconfig), "--name", name,
            "--identity", identity, "--timing", ",".join(str(x) for x in timing), "--log", str(log),
        ]  # fmt: skip
        return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        leader = spawn("a")
        procs.append(leader)
        if _wait_for(log, "a", "LEAD", 30.0) is None:
            return {"error": "the first candidate never led"}
        standby = spawn("b")
        procs.append(standby)
        if _wait_for(log, "b", "READY", 30.0) is None:
            return {"error": "the standby did not start"}
        # let the standby observe the Lease (it reads at once, then every retry period)
        time.sleep(2 * retry + 0.5)
        sent = time.time()
        leader.send_signal(sig)
        cap = 2 * lease + 3 * retry + 10.0
        led = _wait_for(log, "b", "LEAD", cap, after=sent)
        leaders = {who for _, who, what in _events(log) if what == "LEAD"}
        return {
            "takeover_s": None if led is None else led - sent,
            "timed_out": led is None,
            "cap_s": cap,
            "leaders": sorted(leaders),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--candidate"]:
        return candidate(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks peers_kubernetes", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tool, profile and signal")
    parser.add_argument("--quick", action="store_true", help="one run each, matched and short profiles only")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    profiles = ["matched", "short"] if args.quick else list(PROFILES)
    peers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-k8s-") as tmp:
        workdir = Path(tmp)
        server, kubeconfig = _start_server(workdir)
        try:
            for profile in profiles:
                for tool, timing in PROFILES[profile].items():
                    for sig in (signal.SIGKILL, signal.SIGTERM):
                        samples: list[float] = []
                        timed_out = 0
                        errors: list[str] = []
                        cap = 0.0
                        for i in range(runs):
                            tag = f"{tool}-{profile}-{sig.name.lower()}-{i}"
                            r = one_run(tool, timing, sig, kubeconfig, workdir, tag)
                            if "error" in r:
                                errors.append(r["error"])
                                continue
                            cap = r["cap_s"]
                            if r["timed_out"]:
                                timed_out += 1
                            else:
                                samples.append(r["takeover_s"])
                        row = {
                            "tool": tool,
                            "profile": profile,
                            "signal": sig.name,
                            "timing": list(timing),
                            "runs": runs,
                            "takeover_s": summary(samples) if samples else None,
                            "takeover_samples_s": [round(v, 6) for v in samples],
                            "over_lease": [round(v / timing[0], 4) for v in samples],
                            "timed_out": timed_out,
                            "cap_s": cap,
                            "errors": errors,
                        }
                        peers.append(row)
                        shown = f"p50 {row['takeover_s']['p50']:.3f} s" if samples else "no takeover"
                        print(
                            f"{tool:18} {profile:8} {sig.name:8} {shown} (timed out {timed_out}, errors {len(errors)})",
                            flush=True,
                        )
        finally:
            server.terminate()
            server.wait(10)
    import kubernetes

    data = {
        "command": ("python -m benchmarks peers_kubernetes " + " ".join(argv)).strip(),
        "kubernetes_client": kubernetes.__version__,
        "peers": peers,
    }
    text = markdown(data)
    print(text)
    if not args.no_write:
        print(f"wrote {write_results('peers_kubernetes', data)}")
        if not args.quick and DOCS.exists():
            doc = DOCS.read_text()
            if MARK in doc:
                head, _, rest = doc.partition(MARK)
                _, _, tail = rest.partition(MARK)
                DOCS.write_text(head + MARK + "\n" + text + "\n" + MARK + tail)
            else:
                DOCS.write_text(doc.rstrip() + "\n\n" + MARK + "\n" + text + "\n" + MARK + "\n")
            print(f"updated {DOCS}")
    return 0


def markdown(data: dict[str, Any]) -> str:
    rows = []
    for p in data["peers"]:
        t = p["takeover_s"]
        rows.append(
            [
                p["tool"],
                p["profile"],
                "/".join(f"{x:g}" for x in p["timing"]),
                p["signal"],
                len(p["takeover_samples_s"]),
                f"{t['p50']:.3f}" if t else "-",
                f"{t['max']:.3f}" if t else "-",
                f"{sorted(p['over_lease'])[len(p['over_lease']) // 2]:.2f}" if p["over_lease"] else "-",
                p["timed_out"],
            ]
        )
    return "\n".join(
        [
            "## Peers on Kubernetes: the official client's leader election",
            "",
            f"Command: `{data['command']}` (kubernetes client {data['kubernetes_client']}, the in-test Lease "
            "API server in its own process). Leader and standby are separate processes; time from the "
            "signal to the leader until the standby's start callback.",
            "",
            table(
                rows,
                [
                    "tool",
                    "profile",
                    "lease/renew/retry s",
                    "signal",
                    "runs",
                    "takeover p50 s",
                    "max s",
                    "p50 / lease",
                    "timed out",
                ],
            ),
        ]
    )
