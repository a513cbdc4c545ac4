"""What the benchmarks share: percentiles, the machine, result files, peers, and the measuring
helpers (waits, renewal timing, graceful handovers) that every backend benchmark uses."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

RESULTS = Path(__file__).parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, sort_keys=True))
    return path


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table (printed, and pasted into docs/benchmarks.md)."""
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


#: how to install every peer the benchmarks compare against
BENCH_EXTRA = "pip install -e '.[bench]'"


def peer_missing(name: str, module: str) -> str | None:
    """One line saying that the peer tool ``name`` is skipped, or None if ``module`` imports here."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        found = False
    return None if found else f"skipped {name}: not installed ({BENCH_EXTRA})"


def script(name: str) -> str:
    """A console script of this interpreter's environment (a venv's bin/), else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else (shutil.which(name) or name)


# --- measuring helpers shared by the backend benchmarks ----------------------------------


def to_ms(values: Sequence[float]) -> list[float]:
    return [v * 1000.0 for v in values]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a private server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.002) -> Any:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


class RenewTimes:
    """An election observer that keeps the duration of every successful renewal."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def renewed(self, election: Any, seconds: float, ok: bool) -> None:
        if ok:
            self.samples.append(seconds)

    def state_changed(self, election: Any, leading: bool) -> None:
        pass


HANDOVER_SETTINGS = "lease 10 s, renew deadline 6 s, retry period 2 s; 3 candidates"


def handover_seconds(url: str, rounds: int, name: str = "bench-handover") -> list[float]:
    """``stop()`` of the leader (a release) to ``on_started_leading`` of a waiting standby.

    Three candidates in this process; retry period 2 s, so a standby that polled instead
    of being woken would show it (about 1 s). Before each stop the standbys know the
    leader, i.e. they are back in their wait.
    """
    from celery_leader import Election

    started_at: dict[str, float] = {}
    guard = threading.Lock()
    counter = iter(range(10**6))

    def make() -> Election:
        ident = f"h{next(counter)}"

        def on_start(_lead: Any, ident: str = ident) -> None:
            with guard:
                started_at[ident] = time.perf_counter()

        return Election(name, url=url, identity=ident, lease_duration=10.0, renew_deadline=6.0, retry_period=2.0,
                        on_started_leading=on_start).start()  # fmt: skip

    nodes = [make() for _ in range(3)]
    times: list[float] = []
    try:
        leader = wait_until(lambda: next((e for e in nodes if e.is_leader), None), 30)
        if leader is None:
            raise RuntimeError("no leader")
        for _ in range(rounds):
            wait_until(lambda lead=leader: all(e.leader == lead.identity for e in nodes if e is not lead), 10)
            time.sleep(0.2)
            with guard:
                started_at.clear()
            t0 = time.perf_counter()
            leader.stop(timeout=10)
            nodes.remove(leader)
            new = wait_until(lambda: next((e for e in nodes if e.is_leader), None), 30)
            if new is None:
                raise RuntimeError("no takeover after a release")
            wait_until(lambda n=new: n.identity in started_at, 5)
            times.append(started_at[new.identity] - t0)
            leader = new
            nodes.append(make())
    finally:
        for e in nodes:
            e.stop(timeout=10)
    return times
