"""Bounded chaos runs of every backend and of the scheduler integrations, several at once.

Every backend of ``benchmarks.chaos.BACKENDS`` runs in every test run, bounded by a count
of faults rather than by time: ``MAX_FAULTS`` faults from a seeded covering plan (SIGKILL,
SIGTERM and SIGSTOP of the leader in every run, then the backend's own kinds; see
:func:`benchmarks.chaos.covering_plan`). The harness mostly waits on lease
timings, so the runs go through ``LANES`` concurrent lanes: each is its own
``python -m benchmarks chaos`` process with its own servers, free ports, proxies, work
directory and database or key prefix (see :mod:`benchmarks._chaos_envs`). Each backend
is its own test id; the seed is printed and in every failure message
(``CELERY_LEADER_CHAOS_SEED`` replays one: the schedule of faults, not the machine's timing).

Asserted: safety only. No overlapping terms, no token regression (a token lower than or
equal to the one before), at least one fault and one handover per run, kill, term and pause
all injected, and (``celery-leader run`` candidates) each signal's checks of the shared
process scenario, :func:`celery_leader.testing.failover.kill_term_stop`: the SIGKILLed
``run``'s child dies with it; on SIGTERM ``run`` stops its child gently, logs the release
and exits 0. So a lane covers its backend's serial kill/term/stop test, which runs with
``CELERY_LEADER_SOAK=1`` only where it checks nothing more (file, redis, etcd, zookeeper,
django-postgresql). For the integrations, counted from the worker's side, no duplicate, no
token regression, no late send. Gaps are not asserted (the benchmark's tables report them
against the design's bounds).

``CELERY_LEADER_SOAK=1`` adds the long version (``test_chaos_soak``: each backend for
``CELERY_LEADER_CHAOS_SECONDS`` of independently drawn faults, one after the other) and
the RQ integrations.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from benchmarks.chaos import BACKENDS, run_chaos
from tests.servers import port_open, unavailable

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("CELERY_LEADER_SOAK") == "1"
#: concurrent runs (each one backend: its servers, three or five candidates, proxies); they
#: mostly wait on lease timings: eight lanes on 2 cores (measured on a quiet machine: 67 s for
#: the eighteen runs, the longest run, SeaweedFS, sets the floor: twelve lanes 67 s too; six
#: lanes 101-103 s)
LANES = int(os.environ.get("CELERY_LEADER_CHAOS_LANES", "8"))
#: faults per bounded run: SIGKILL, SIGTERM and SIGSTOP of the leader, then the backend's own
#: kinds (all of them but for Kubernetes, S3 and the git servers, which have four: three of
#: those per run, rotating by seed)
MAX_FAULTS = int(os.environ.get("CELERY_LEADER_CHAOS_FAULTS", "6"))
#: faults per bounded integration run (SIGKILL, SIGTERM, SIGSTOP of the leading scheduler)
INTEGRATION_FAULTS = 3
#: seconds of faults per soak run
SOAK_SECONDS = float(os.environ.get("CELERY_LEADER_CHAOS_SECONDS", "60"))
#: a lane's run is stopped (SIGTERM: it cleans up) after this long
RUN_TIMEOUT = 600.0
#: the longest runs first, so that the lanes end together (measured on 2 cores at a load
#: average of 15-25: SeaweedFS, gossip, runasleader and moto ~45 s; file ~17 s); the RQ runs
#: (soak) go first of all
ORDER = ["rq-worker", "rq-scheduler", "rq-cron", "s3-seaweedfs", "gossip-5", "runasleader", "s3-moto", "gossip-3",
         "git-http", "git-daemon", "django-postgresql", "zookeeper", "django-mariadb", "kubernetes", "etcd",
         "postgresql", "celery-beat", "redis", "git-file", "file", "apscheduler"]  # fmt: skip
INTEGRATIONS = ["celery-beat", "apscheduler", "rq-cron", "rq-worker", "rq-scheduler"]
#: the RQ runs start their own redis-server and three schedulers each: soak only
SOAK_INTEGRATIONS = {"rq-cron", "rq-worker", "rq-scheduler"}
#: runs in one group never overlap (none needed so far: see _chaos_envs for why two gossip
#: runs do not collide; kept for a backend whose environment is not independent)
GROUPS: dict[str, str] = {}

pytestmark = pytest.mark.processes


def _seed() -> int:
    fixed = os.environ.get("CELERY_LEADER_CHAOS_SEED")
    return int(fixed) if fixed else random.randrange(1 << 30)


def _need(name: str) -> None:
    """Skip (or, with CELERY_LEADER_REQUIRE_SERVICES=1, fail) when a run cannot start here."""
    binaries = {"redis": "redis-server", "etcd": "etcd", "zookeeper": "java", "gossip-3": "serf", "gossip-5": "serf",
                "git-file": "git", "git-daemon": "git", "git-http": "git", "s3-seaweedfs": "weed",
                "rq-cron": "redis-server", "rq-worker": "redis-server", "rq-scheduler": "redis-server"}  # fmt: skip
    modules = {"postgresql": "psycopg", "django-postgresql": "psycopg2", "django-mariadb": "pymysql",
               "runasleader": "psycopg2", "s3-moto": "moto", "s3-seaweedfs": "boto3", "kubernetes": "kubernetes",
               "celery-beat": "celery", "apscheduler": "apscheduler", "rq-cron": "rq", "rq-worker": "rq",
               "rq-scheduler": "rq"}  # fmt: skip
    servers = {"postgresql": 5432, "django-postgresql": 5432, "runasleader": 5432, "django-mariadb": 3306,
               "celery-beat": 6379, "apscheduler": 6379}  # fmt: skip
    if name in binaries and shutil.which(binaries[name]) is None:
        unavailable(f"{binaries[name]} is not installed (needed by the {name} chaos run)")
    if name in modules and importlib.util.find_spec(modules[name]) is None:
        unavailable(f"{modules[name]} is not installed (needed by the {name} chaos run)")
    if name in servers and not port_open(servers[name]):
        unavailable(f"nothing listens on 127.0.0.1:{servers[name]} (needed by the {name} chaos run)")
    if name.startswith("gossip") and os.geteuid() != 0:
        unavailable("the gossip chaos run partitions serf agents with iptables owner rules: it needs root")


# --- the lanes ------------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    integration: bool
    seed: int
    workdir: Path
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "run.log"

    @property
    def out(self) -> Path:
        return self.workdir / "result.jsonl"

    def argv(self) -> list[str]:
        common = ["--seed", str(self.seed), "--no-store", "--json", str(self.out)]
        if self.integration:
            return [sys.executable, "-m", "benchmarks", "chaos_integrations", "--integration", self.name,
                    "--duration", "300", "--max-faults", str(INTEGRATION_FAULTS), *common]  # fmt: skip
        # the count ends the run; --duration only caps it
        return [sys.executable, "-m", "benchmarks", "chaos", "--backend", self.name, "--duration", "300",
                "--max-faults", str(MAX_FAULTS), "--fence-url", "none", *common]  # fmt: skip

    def replay(self) -> str:
        if self.integration:
            return (f"python -m benchmarks chaos_integrations --integration {self.name} --seed {self.seed} "
                    f"--max-faults {INTEGRATION_FAULTS} --no-store")  # fmt: skip
        return f"python -m benchmarks chaos --backend {self.name} --seed {self.seed} --max-faults {MAX_FAULTS} --no-store"

    def where(self) -> str:
        return f"({self.name}, seed {self.seed}; replay: {self.replay()}, or CELERY_LEADER_CHAOS_SEED={self.seed})"

    def run(self) -> None:
        started = time.monotonic()
        try:
            for attempt in (1, 2):
                code = self._attempt()
                lines = self.out.read_text().splitlines() if self.out.exists() else []
                if lines:
                    self.result = json.loads(lines[-1])
                    self.result["attempts"] = attempt
                    return
                if code is None:
                    self.error = f"still running after {RUN_TIMEOUT:.0f} s (stopped)"
                    return
                self.error = f"the run stored no result (exit code {code})"
                # servers that did not start (a free port taken meanwhile on a busy machine):
                # once more, same seed; a run that failed after it started is not repeated
                if attempt == 2 or ("EnvironmentStartError" not in self.log.read_text(errors="replace")
                                    and not self.server_missing()):  # fmt: skip
                    return
                print(f"chaos: {self.name} did not start its servers; once more", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported by the backend's test
            self.error = f"the run could not start: {exc!r}"
        finally:
            self.seconds = time.monotonic() - started
            self.done.set()

    def _attempt(self) -> int | None:
        with open(self.log, "ab") as log:
            # a session of its own: a stuck run's whole group can be stopped
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
            try:
                return self.proc.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.stop()
                return None

    def stop(self) -> None:
        """SIGTERM (the harness unwinds: servers, candidates, proxies, partitions), then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def server_missing(self) -> str:
        """The reason, when the run could not start a server (tests/servers.py ``unavailable``
        inside the harness ends it with pytest's ``Skipped: ...`` or ``Failed: ...``)."""
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith(("Skipped: ", "Failed: ")):
                    return line.split(": ", 1)[1].strip().removeprefix("required service unavailable: ")
        return ""

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Lanes:
    """``lanes`` threads, each taking the next job whose group is not running."""

    def __init__(self, jobs: list[Job], lanes: int) -> None:
        self.jobs = {job.name: job for job in jobs}
        self.todo = list(jobs)
        self.busy: set[str] = set()
        self.cond = threading.Condition()
        self.closing = False
        self.threads = [threading.Thread(target=self._lane, name=f"chaos-lane-{i}", daemon=True)
                        for i in range(max(1, min(lanes, len(jobs))))]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def _next(self) -> Job | None:
        with self.cond:
            while True:
                if self.closing or not self.todo:
                    return None
                for job in self.todo:
                    group = GROUPS.get(job.name)
                    if group is None or group not in self.busy:
                        self.todo.remove(job)
                        if group is not None:
                            self.busy.add(group)
                        return job
                self.cond.wait()

    def _lane(self) -> None:
        while (job := self._next()) is not None:
            print(f"chaos: {job.name} starts, seed {job.seed}", flush=True)
            job.run()
            with self.cond:
                self.busy.discard(GROUPS.get(job.name, ""))
                self.cond.notify_all()

    def wait(self, name: str) -> Job:
        job = self.jobs[name]
        job.done.wait()
        return job

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        for job in self.jobs.values():
            job.stop()
        for thread in self.threads:
            thread.join(90)


def _selected(session: pytest.Session) -> list[tuple[str, bool]]:
    """(name, integration?) of this session's bounded runs that are not skipped outright."""
    found = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        name = getattr(item, "originalname", "")
        if callspec is None or name not in ("test_chaos_run", "test_chaos_integration"):
            continue
        if item.get_closest_marker("soak") is not None and not SOAK:
            continue
        found.append((callspec.params.get("backend") or callspec.params["integration"], name != "test_chaos_run"))
    return found


@pytest.fixture(scope="module")
def lanes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lanes]:
    """Every selected run, started at once through the lanes; each test waits for its own."""
    jobs = []
    for name, integration in _selected(request.session):
        try:
            _need(name)
        except (pytest.skip.Exception, pytest.fail.Exception):
            continue  # the test itself skips or fails with the reason
        jobs.append(Job(name, integration, _seed(), tmp_path_factory.mktemp(f"chaos-{name}")))
    rank = {name: i for i, name in enumerate(ORDER)}
    jobs.sort(key=lambda job: rank.get(job.name, len(rank)))
    started = time.monotonic()
    load = os.getloadavg()[0]
    pool = Lanes(jobs, LANES)
    yield pool
    pool.close()
    print(f"\nchaos: {len(jobs)} runs in {LANES} lanes, {time.monotonic() - started:.0f} s "
          f"(load {load:.1f} -> {os.getloadavg()[0]:.1f}): "
          + ", ".join(f"{job.name} {job.seconds:.0f} s" for job in jobs))  # fmt: skip


def _check_run(job: Job) -> None:
    again = " (the second attempt: the first did not start its servers)" if (job.result or {}).get("attempts") == 2 else ""
    print(f"chaos: {job.name}, seed {job.seed}, {job.seconds:.0f} s{again}\n{job.tail()}")
    if job.result is None and job.server_missing():
        unavailable(f"{job.server_missing()} {job.where()}")
    assert job.result is not None, f"{job.error} {job.where()}\n{job.tail()}"
    got = job.result
    assert got["faults"], f"no fault was injected {job.where()}"
    stopped = [n for n in got["notes"] if "stopped early" in n]
    assert not stopped, f"{stopped} {job.where()}"
    assert not got["overlaps"] and not got["token_regressions"], f"{got.get('safety')} {job.where()}"
    assert got["handovers"] >= 1, f"leadership never changed hands ({got['terms']} terms) {job.where()}"
    # the shared process scenario's per-signal checks (celery_leader.testing.failover)
    assert not got.get("fault_checks"), f"{got['fault_checks']} {job.where()}"
    kinds = set(got["faults_by_kind"])
    assert {"kill", "term", "pause"} <= kinds, f"the plan missed a common fault: {sorted(kinds)} {job.where()}"


@pytest.mark.timeout(RUN_TIMEOUT + 300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_chaos_run(lanes: Lanes, backend: str) -> None:
    _need(backend)
    _check_run(lanes.wait(backend))


_soak = [pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="soak run: set CELERY_LEADER_SOAK=1")]


@pytest.mark.timeout(RUN_TIMEOUT + 300)
@pytest.mark.parametrize("integration", [pytest.param(k, marks=_soak) if k in SOAK_INTEGRATIONS else k
                                         for k in INTEGRATIONS])  # fmt: skip
def test_chaos_integration(lanes: Lanes, integration: str) -> None:
    """Failovers of the leading scheduler; duplicates and token order counted by the workers."""
    _need(integration)
    job = lanes.wait(integration)
    print(f"chaos: {integration}, seed {job.seed}, {job.seconds:.0f} s\n{job.tail()}")
    if job.result is None and job.server_missing():
        unavailable(f"{job.server_missing()} {job.where()}")
    assert job.result is not None, f"{job.error} {job.where()}\n{job.tail()}"
    got = job.result
    assert got["faults"], f"no fault was injected {job.where()}"
    assert got["failovers"] >= 1, f"no failover {job.where()}"
    assert got["duplicates"] == 0, f"{got['duplicates']} duplicate runs {job.where()}"
    assert got["token_regressions"] == 0, f"{got['token_regressions']} token regressions {job.where()}"
    assert not got.get("late_sends"), f"{got['late_sends']} sends by a deposed leader {job.where()}"


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not SOAK, reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.parametrize("backend", BACKENDS)
def test_chaos_soak(tmp_path: Path, backend: str) -> None:
    """The long version: independently drawn faults for SOAK_SECONDS, one backend at a time."""
    _need(backend)
    seed = _seed()
    print(f"chaos soak: {backend}, seed {seed}")
    result = run_chaos(backend, SOAK_SECONDS, seed, workdir=tmp_path)
    where = f"({backend}, seed {seed}; replay with CELERY_LEADER_CHAOS_SEED={seed})"
    assert result.faults, f"no fault was injected {where}"
    assert not result.safety_lines(), f"{result.safety_lines()} {where}"
    assert result.handovers >= 1, f"{result.report.summary()} {where}"
