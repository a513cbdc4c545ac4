"""Real RQ processes for the process tests: schedulers, workers, signals, and the checks.

A :class:`Fleet` owns one tag (queue, election and key names), a work directory with one
log per process, and every process it starts (each in its own session, always stopped).
Afterwards it deletes every Redis key it created on the shared server.
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
from pathlib import Path

import redis

from celery_leader.registry import open_backend

from .conftest import RQ_SCHEDULER_PATH

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
LEADER = [sys.executable, "-m", "celery_leader.integrations.rq"]
RQ = [sys.executable, "-m", "rq.cli"]
#: short timing so that failovers take about a second (the engine's validation allows it)
TIMING = ["--lease-duration", "1.0", "--renew-deadline", "0.6", "--retry-period", "0.2"]
LEASE = 1.0


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Fleet:
    def __init__(self, workdir: Path, kind: str, redis_url: str = REDIS_URL) -> None:
        self.tag = f"clt-{kind}-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.queue = self.tag
        self.record = workdir / "runs.jsonl"
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.env = {
            **os.environ,
            "CLT_RQ_TAG": self.tag,
            "PYTHONUNBUFFERED": "1",
            # rq-scheduler's own directory, if tests/rq/conftest.py had to install it apart
            "PYTHONPATH": os.pathsep.join(
                p for p in [str(ROOT), os.environ.get("PYTHONPATH", ""), RQ_SCHEDULER_PATH] if p
            ),
        }
        self.env.pop("CELERY_LEADER_URL", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.backend = open_backend(redis_url)
        self.elections: set[str] = set()

    # --- processes -----------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def signal(self, name: str, sig: int, *, group: bool = False) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    def wait_dead(self, name: str, timeout: float = 60.0) -> int:
        return self.procs[name].wait(timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # scheduler children of SIGKILLed workers: their sessions are the workers' pids
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop_all()
        keys = list(self.redis.scan_iter(match=f"*{self.tag}*", count=1000))
        for name in self.elections:
            keys += [f"celery-leader:lock:{name}", f"celery-leader:fence:{name}"]
        if keys:
            self.redis.delete(*keys)
        self.backend.close()
        self.redis.close()

    # --- election state ------------------------------------------------------------------

    def holder(self, election: str) -> str:
        self.elections.add(election)
        lock = self.backend.lock(election)
        try:
            found = lock.get(2.0)
        finally:
            lock.close()
        return found.record.holder if found is not None else ""

    # --- records -------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


def pid_of_identity(identity: str) -> int:
    """``<hostname>-<pid>-<random>`` -> pid."""
    return int(identity.rsplit("-", 2)[1])
