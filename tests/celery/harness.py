"""Real ``celery beat`` / ``celery worker`` processes for the process tests, and the checks.

A :class:`Deployment` owns one queue, one election name, one record file and the
processes started for it; every process runs in its own session and is always stopped.
The test task (:func:`tests.celery.app.record`) appends one JSON line per run with the
fencing token and identity of the beat that sent it (message headers set by
``celery_leader.beat``) and the time it was sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "tests.celery.app"]


class Deployment:
    """Beats and workers sharing one queue, one election and one record file."""

    def __init__(self, workdir: Path, lock_url: str, broker: str, **env: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        self.queue = f"clt-{tag}"
        self.record = workdir / "runs.jsonl"
        self.env = {
            **os.environ,
            "CLT_BROKER": broker,
            "CLT_QUEUE": self.queue,
            "CLT_RECORD": str(self.record),
            "CLT_LOCK_URL": lock_url,
            "CLT_NAME": f"clt-{tag}.beat",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # --- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name], self.logs[name] = proc, log
        return proc

    def beat(self, identity: str, *extra: str, **env: str) -> subprocess.Popen:
        argv = [*CELERY, "beat", "-S", "leader", "-l", "info", "-s", str(self.workdir / f"{identity}.schedule")]
        return self._spawn(identity, argv + list(extra), {**self.env, "CLT_IDENTITY": identity, **env})

    def worker(self, name: str, *extra: str, **env: str) -> subprocess.Popen:
        argv = [
            *CELERY, "worker", "-P", "solo", "-l", "info", "-n", f"{name}@%h", "-Q", self.queue,
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        return self._spawn(name, argv + list(extra), {**self.env, "CLT_WORKER_NAME": name, **env})

    def signal(self, name: str, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.procs[name].wait(10)

    def terminate(self, name: str, timeout: float = 15.0) -> int:
        self.signal(name, signal.SIGTERM)
        return self.procs[name].wait(timeout)

    def pause(self, name: str, seconds: float) -> tuple[float, float]:
        """SIGSTOP for ``seconds``, then SIGCONT; returns (stopped at, resumed at) wall times."""
        self.signal(name, signal.SIGSTOP)
        stopped = time.time()
        time.sleep(seconds)
        resumed = time.time()
        self.signal(name, signal.SIGCONT)
        return stopped, resumed

    def log_text(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return self.logs[name].read_text(errors="replace")
        return ""

    def wait_log(self, name: str, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text(name):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{name} did not log {text!r} within {timeout}s:\n{self.log_text(name)[-3000:]}")

    def stop(self) -> None:
        for name in list(self.procs):
            self.signal(name, signal.SIGCONT)
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -------------------------------------------------------------------

    def runs(self, kind: str = "beat") -> list[dict]:
        out = []
        with contextlib.suppress(FileNotFoundError), open(self.record) as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    run = json.loads(line)
                    if run.get("kind") == kind:
                        out.append(run)
        out.sort(key=lambda r: r["sent"] if r.get("sent") is not None else r["start"])
        return out

    def wait_runs(self, predicate: Callable[[list[dict]], bool], timeout: float = 20.0, what: str = "") -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs()
            if predicate(runs):
                return runs
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or predicate}; runs: {self.runs()[-8:]}\n{self.tails()}")

    def wait_new_leader(self, after: float, exclude: set[str], count: int = 2, timeout: float = 60.0) -> str:
        """Identity of the beat that sent ``count`` runs after ``after`` (wall time), not in ``exclude``."""

        def found(runs: list[dict]) -> bool:
            fresh = [r for r in runs if r["sent"] > after and r["identity"] not in exclude]
            return len(fresh) >= count

        runs = self.wait_runs(found, timeout, f"a leader other than {sorted(exclude)} after {after}")
        return [r for r in runs if r["sent"] > after and r["identity"] not in exclude][-1]["identity"]

    def tails(self, lines: int = 15) -> str:
        parts = []
        for name in self.procs:
            text = self.log_text(name).splitlines()[-lines:]
            parts.append(f"--- {name} (rc={self.procs[name].poll()}) ---\n" + "\n".join(text))
        return "\n".join(parts)


@dataclass
class RunCheck:
    """What the record file says about a run of beats."""

    runs: list[dict]
    duplicates: list[tuple[dict, dict]] = field(default_factory=list)
    token_regressions: list[tuple[dict, dict]] = field(default_factory=list)
    shared_tokens: list[int] = field(default_factory=list)

    def gap_around(self, moment: float) -> float:
        """Seconds between the last run sent before ``moment`` and the first one after it."""
        before = [r["sent"] for r in self.runs if r["sent"] <= moment]
        after = [r["sent"] for r in self.runs if r["sent"] > moment]
        assert before and after, f"no runs on both sides of {moment}"
        return min(after) - max(before)


def check_runs(runs: list[dict], interval: float) -> RunCheck:
    """No run sent twice (two sends closer than half an interval), tokens never go back."""
    report = RunCheck(runs)
    for a, b in zip(runs, runs[1:]):
        if b["sent"] - a["sent"] < interval / 2:
            report.duplicates.append((a, b))
        if b["token"] < a["token"]:
            report.token_regressions.append((a, b))
    owners: dict[int, set[str]] = {}
    for r in runs:
        owners.setdefault(r["token"], set()).add(r["identity"])
    report.shared_tokens = [t for t, ids in owners.items() if len(ids) > 1]
    return report


def failover(dep: Deployment, interval: float = 1.0, lease: float = 1.0) -> dict:
    """Four beats and a worker: SIGKILL the leader, SIGTERM the next, SIGSTOP the third past the lease.

    Returns the moments and identities for the caller's assertions.
    """
    dep.worker("w1")
    beats = [f"beat{i}" for i in range(4)]  # the fourth takes over from the paused leader
    for name in beats:
        dep.beat(name)  # started together: each start-up costs seconds of CPU
    runs = dep.wait_runs(lambda r: len(r) >= 2, 40, "two runs from the first leader")
    first = runs[-1]["identity"]
    t_kill = time.time()
    dep.kill(first)
    second = dep.wait_new_leader(t_kill, {first})
    t_term = time.time()
    rc = dep.terminate(second)
    third = dep.wait_new_leader(t_term, {first, second})
    (standby,) = set(beats) - {first, second, third}
    dep.wait_log(standby, "standing for")  # it has long been up; do not rely on that
    t_pause, t_resume = dep.pause(third, lease + 1.5)
    fourth = dep.wait_new_leader(t_pause, {first, second, third})
    time.sleep(interval * 1.5)  # the resumed beat has had time to (wrongly) send
    return {
        "first": first, "second": second, "third": third, "fourth": fourth,
        "t_kill": t_kill, "t_term": t_term, "t_pause": t_pause, "t_resume": t_resume, "term_rc": rc,
    }  # fmt: skip
