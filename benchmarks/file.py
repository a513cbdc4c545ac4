"""The embedded ``file://`` backend: handover, crash takeover, idle CPU, CAS latency.

``python -m benchmarks file [--handovers 50] [--crashes 10] [--idle-seconds 20]``

Writes ``benchmarks/results/file.json`` and ``docs/bench-file.md``.

* CAS latency: one ``update`` (flock, read, temp file, fsync, rename, fsync dir).
* Graceful handover, library: two :class:`Election` objects; from calling the leader's
  ``stop()`` (which releases) to the standby's ``on_started_leading``.
* Graceful handover, CLI: three ``celery-leader run`` processes; SIGTERM the leader;
  from its child's last log line to the next child's first (includes the new child's
  Python start-up).
* Crash takeover: SIGKILL the leader's ``run``; from its child's last beat to the next
  child's start, divided by ``lease_duration``.
* Idle CPU: ``run`` processes with the default timing (15 s / 10 s / 2 s) and ``sleep`` as
  the command, over ``--idle-seconds`` from ``/proc/PID/stat`` (the ``run`` process only).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, machine, summary, table, write_results
from celery_leader.backends.file import FileBackend
from celery_leader.election import Election
from celery_leader.record import LeaderRecord
from celery_leader.testing.cluster import ElectorCluster

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench-file.md"
LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def cas_latency(directory: Path, n: int) -> dict[str, float]:
    lock = FileBackend(directory).lock("cas")
    version = lock.create(LeaderRecord(holder="a", lease_duration=15, transitions=1), 5.0)
    times = []
    for i in range(n):
        started = time.perf_counter()
        version = lock.update(LeaderRecord(holder="a", lease_duration=15, transitions=1, renew_time=i), version, 5.0)
        times.append((time.perf_counter() - started) * 1000)
    gets = []
    for _ in range(n):
        started = time.perf_counter()
        lock.get(5.0)
        gets.append((time.perf_counter() - started) * 1000)
    lock.close()
    return {"update_ms": summary(times), "get_ms": summary(gets)}


def library_handover(directory: Path, n: int) -> list[float]:
    """Seconds from calling the leader's ``stop()`` (which releases) to the standby leading."""
    url = f"file://{directory}"
    started_at: dict[str, float] = {}
    led = threading.Condition()

    def elect(identity: str) -> Election:
        def started(_lead: Any) -> None:
            with led:
                started_at[identity] = time.monotonic()
                led.notify_all()

        return Election("handover", url=url, identity=identity, lease_duration=LEASE, renew_deadline=RENEW,
                        retry_period=RETRY, on_started_leading=started).start()  # fmt: skip

    out: list[float] = []
    standby_name = "s0"
    leader = elect("first")
    if not leader.wait_until_leader(20):
        raise RuntimeError("no leader")
    for i in range(n):
        standby_name = f"s{i}"
        standby = elect(standby_name)
        time.sleep(0.3)  # the standby is watching
        released = time.monotonic()
        leader.stop()
        with led:
            if not led.wait_for(lambda: standby_name in started_at, 20):  # noqa: B023
                raise RuntimeError("standby did not take over")
        out.append(started_at[standby_name] - released)
        leader = standby
    leader.stop()
    return out


def _failovers(workdir: Path, label: str, n: int, stop: str, settle: float) -> tuple[list[float], dict[str, Any]]:
    """``n`` rounds: stop the leader (``terminate`` or ``kill``), wait for the next, restart it.

    Returns the gaps without a leader, from the children's own logs, and the term counts.
    """
    lock_dir = workdir / f"locks-{label}"
    lock_dir.mkdir()
    cluster = ElectorCluster(f"file://{lock_dir}", label, n=3, workdir=workdir / label,
                             lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)  # fmt: skip
    with cluster:
        for _ in range(n):
            i = cluster.wait_for_leader(timeout=20)
            time.sleep(settle)
            getattr(cluster, stop)(i)
            cluster.wait_exit(i, 15)
            cluster.wait_for_leader(timeout=20, exclude={i})
            cluster.restart(i)
    report = cluster.check()
    report.assert_safe()
    return [gap for _, _, gap in report.gaps], {"terms": len(report.intervals), "overlaps": len(report.overlaps)}


def cli_handover(workdir: Path, n: int) -> tuple[list[float], dict[str, Any]]:
    """SIGTERM of the leader's ``run``: seconds until the next child starts."""
    return _failovers(workdir, "graceful", n, "terminate", 0.3)


def crash_takeover(workdir: Path, n: int) -> tuple[list[float], dict[str, Any]]:
    """SIGKILL of the leader's ``run``: time until the next child starts, over the lease."""
    gaps, info = _failovers(workdir, "crash", n, "kill", 0.5)
    return [gap / LEASE for gap in gaps], info


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of the process itself


def idle_cpu(workdir: Path, seconds: float) -> dict[str, float]:
    """Percent of one core used by an idle leader and an idle standby (default timing)."""
    lock_dir = workdir / "locks-idle"
    lock_dir.mkdir()

    def run(identity: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "celery_leader", "run", "--url", f"file://{lock_dir}", "--name", "idle",
                "--identity", identity, "--", "sleep", "3600"]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    lock = FileBackend(lock_dir).lock("idle")
    leader = run("leader")
    standby = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = lock.get(2.0)
            if got is not None and got.record.holder == "leader":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the idle leader never led")
        standby = run("standby")
        time.sleep(3.0)  # past start-up
        tck = os.sysconf("SC_CLK_TCK")
        before = {p.pid: _cpu_ticks(p.pid) for p in (leader, standby)}
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        after = {p.pid: _cpu_ticks(p.pid) for p in (leader, standby)}
        got = lock.get(2.0)
        assert got is not None and got.record.holder == "leader", "leadership moved during the idle measurement"
        pct = {pid: 100.0 * (after[pid] - before[pid]) / tck / elapsed for pid in before}
        return {"leader_pct": pct[leader.pid], "standby_pct": pct[standby.pid], "seconds": elapsed}
    finally:
        lock.close()
        for p in (standby, leader):
            if p is not None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks file", description=__doc__.splitlines()[0])
    parser.add_argument("--handovers", type=int, default=50)
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--cas-ops", type=int, default=500)
    args = parser.parse_args(argv)
    command = "python -m benchmarks file " + shlex.join(argv) if argv else "python -m benchmarks file"

    with tempfile.TemporaryDirectory(prefix="bench-file-") as tmp:
        work = Path(tmp)
        (work / "cas").mkdir()
        (work / "lib").mkdir()
        print("CAS latency ...", flush=True)
        cas = cas_latency(work / "cas", args.cas_ops)
        print("graceful handover, library ...", flush=True)
        lib = library_handover(work / "lib", args.handovers)
        print("graceful handover, CLI ...", flush=True)
        cli, cli_info = cli_handover(work, args.handovers)
        print("crash takeover ...", flush=True)
        crash, crash_info = crash_takeover(work, args.crashes)
        print("idle CPU ...", flush=True)
        idle = idle_cpu(work, args.idle_seconds)

    results = {
        "command": command,
        "timing": {"lease_duration": LEASE, "renew_deadline": RENEW, "retry_period": RETRY},
        "cas": cas,
        "graceful_handover_library_s": summary(lib),
        "graceful_handover_cli_s": {**summary(cli), **cli_info},
        "crash_takeover_over_lease": {**summary(crash), **crash_info},
        "idle_cpu_default_timing": idle,
    }
    path = write_results("file", results)
    rows = [
        [
            "CAS update (ms)",
            cas["update_ms"]["n"],
            cas["update_ms"]["p50"],
            cas["update_ms"]["p99"],
            cas["update_ms"]["max"],
        ],
        ["get (ms)", cas["get_ms"]["n"], cas["get_ms"]["p50"], cas["get_ms"]["p99"], cas["get_ms"]["max"]],
        ["graceful handover, library (s)", len(lib), *(summary(lib)[k] for k in ("p50", "p99", "max"))],
        ["graceful handover, CLI child to child (s)", len(cli), *(summary(cli)[k] for k in ("p50", "p99", "max"))],
        ["crash takeover / lease_duration", len(crash), *(summary(crash)[k] for k in ("p50", "p99", "max"))],
    ]
    m = machine()
    md = "\n".join(
        [
            "## Benchmark: the file:// backend",
            "",
            f"Command: `{command}` (from the repository root). Results: `benchmarks/results/file.json`.",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}, ext4; {m['when']}.",
            f"Timing for handovers and crashes: lease {LEASE} s, renew deadline {RENEW} s, retry period {RETRY} s.",
            "",
            table(rows, ["measure", "n", "p50", "p99", "max"]),
            "",
            "Idle CPU of one `celery-leader run` process (default timing 15 s / 10 s / 2 s, "
            f"command `sleep`, {idle['seconds']:.0f} s from /proc/PID/stat, % of one core): "
            f"leader {idle['leader_pct']:.2f} %, standby {idle['standby_pct']:.2f} %.",
            "",
            "How to read it: a graceful release is seen by the standby's stat poll (every 20 ms), so the "
            "library handover is one poll plus one compare-and-swap; the CLI number adds the new child's "
            "Python start-up. A crash costs one lease (the standby's clock starts when it saw the last renewal), "
            "never less: that is the safety rule, not a delay to tune away.",
            "",
        ]
    )
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(md)
    print(md)
    print(f"wrote {path.relative_to(RESULTS.parent.parent)} and {DOCS.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
