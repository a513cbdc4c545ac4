"""RQ scheduling: RQ's own locks beside celery-leader's elections, on one Redis.

``python -m benchmarks rq [--failovers N] [--worker-stall S] [--rqs-stall S] [--quick]``

Everything runs against a private ``redis-server`` on a free 127.0.0.1 port (RQ's and
rq-scheduler's keys are global, so they must not meet another run's), as real processes:

1. **Long enqueue cycle.** Two schedulers; the one that holds the lock stalls in the middle
   of one enqueue cycle (it loads a due job whose first load sleeps, see
   ``tests/rq/stall.py``) for longer than the lock's TTL, then finishes the cycle.
   * ``rq worker --with-scheduler`` (RQ's lock: ``interval + 60`` = 61 s; stall 70 s;
     ``--maintenance-interval 5 --worker-ttl 20`` so that the second worker retries the
     lock every 5 s: an idle worker runs its maintenance, where RQ retries the lock, only
     between jobs or after a dequeue timeout of worker TTL - 15 s, 405 s by default)
     against ``-w ...LeaderSimpleWorker`` (our defaults, same worker options);
   * ``rqscheduler -i 1`` (lock ``interval + 10`` = 11 s; stall 15 s) against
     ``celery-leader-rq scheduler -i 1`` (our defaults).
   Six jobs are due in the stalled cycle; duplicates are runs of a job id beyond its first.
2. **Several cron schedulers.** Three ``rq cron`` (no lock at all) against three
   ``celery-leader-rq cron``, one job every second, for ``--cron-seconds``.
3. **Failovers.** Ours, lease 1 s / renew deadline 0.6 s / retry 0.2 s, three candidates:
   the leader is SIGKILLed, SIGTERMed and SIGSTOPped in turn (a stopped one is resumed
   after the takeover and stays as a standby; killed ones are replaced). Takeover = the
   signal to the first enqueue (cron) or move (schedulers) by the next term; duplicates;
   missed runs (cron slots never enqueued; scheduled jobs never run). Beside them, RQ's
   own: rq-scheduler instances SIGKILLed at random moments, and one SIGKILL of the worker
   holding RQ's scheduler lock (capped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, summary, table, write_results

DOC = Path(__file__).resolve().parent.parent / "docs" / "bench-rq.md"
IMG = Path(__file__).resolve().parent.parent / "docs" / "img" / "rq.png"
FAST = {"CELERY_LEADER_LEASE_DURATION": "1.0", "CELERY_LEADER_RENEW_DEADLINE": "0.6", "CELERY_LEADER_RETRY_PERIOD": "0.2"}
FAST_FLAGS = ["--lease-duration", "1.0", "--renew-deadline", "0.6", "--retry-period", "0.2"]
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP)
PARTS = ("cycle-rqs", "cycle-worker", "cron", "failovers-cron", "failovers-worker", "failovers-rqscheduler",
         "peer-rqs", "peer-worker")


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _fleet(workdir: Path, kind: str, url: str) -> Any:
    from tests.rq.harness import Fleet

    fleet = Fleet(workdir / kind, kind, redis_url=url)
    fleet.workdir.mkdir(parents=True, exist_ok=True)
    fleet.env["CLT_RQ_REDIS"] = url
    return fleet


def _wait(what: str, predicate: Any, timeout: float, every: float = 0.1) -> Any:
    from tests.rq.harness import wait_for

    return wait_for(what, predicate, timeout=timeout, every=every)


def _duplicates(runs: list[dict]) -> int:
    return sum(n - 1 for n in Counter(r["id"] for r in runs).values())


# --- 1. long enqueue cycle ------------------------------------------------------------------


def long_cycle_worker(workdir: Path, url: str, ours: bool, stall: float) -> dict[str, Any]:
    """Two ``rq worker --with-scheduler``; the scheduler holder stalls ``stall`` s mid-cycle."""
    from rq import Queue

    from tests.rq.stall import KEY, STALL, SlowOnce

    fleet = _fleet(workdir, f"cycle-worker-{'ours' if ours else 'rq'}", url)
    try:
        worker_class = "celery_leader.integrations.rq.LeaderSimpleWorker" if ours else "rq.SimpleWorker"
        argv = _py("-m", "rq.cli", "worker", "--url", url, "-w", worker_class, "--with-scheduler",
                   "--serializer", "tests.rq.stall.SlowOnce", "--maintenance-interval", "5", "--worker-ttl", "20", fleet.queue)
        fleet.spawn("a", argv)
        if ours:
            election = f"rq.scheduler.{fleet.queue}"
            _wait("worker a's scheduler to lead", lambda: fleet.holder(election), 60)
        else:
            _wait("worker a's scheduler lock", lambda: fleet.redis.exists(f"rq:scheduler-lock:{fleet.queue}"), 60)
        fleet.spawn("b", argv)
        time.sleep(3.0)  # b is up, its scheduler (if any) standing by
        queue = Queue(fleet.queue, connection=fleet.redis, serializer=SlowOnce)
        due = datetime.now(timezone.utc) + timedelta(seconds=2)
        path = str(fleet.record)
        ids = [queue.enqueue_at(due, "tests.rq.jobs.record", path,
                                meta={STALL: stall, KEY: f"{fleet.tag}:stall"}).id]
        ids += [queue.enqueue_at(due, "tests.rq.jobs.record", path).id for _ in range(5)]
        _wait("every job to run once", lambda: set(ids) <= {r["id"] for r in fleet.runs()}, stall + 120)
        first_all = time.time()
        # the stalled scheduler wakes up at due + stall: give it time to repeat the cycle
        _wait("the stalled cycle to end", lambda: time.time() > due.timestamp() + stall + 8, stall + 60, every=0.5)
        runs = fleet.runs()
        return {
            "scenario": "rq worker --with-scheduler",
            "tool": "celery-leader LeaderSimpleWorker (defaults)" if ours else "RQ 3.0 (lock TTL 61 s)",
            "stall_s": stall,
            "jobs": len(ids),
            "runs": len(runs),
            "duplicates": _duplicates(runs),
            "all_ran_after_s": round(first_all - due.timestamp(), 2),
        }
    finally:
        fleet.cleanup()


def long_cycle_rqscheduler(workdir: Path, url: str, ours: bool, stall: float) -> dict[str, Any]:
    """Two rq-scheduler instances (``-i 1``); the lock holder stalls ``stall`` s mid-cycle."""
    from rq_scheduler import Scheduler

    from tests.rq.stall import KEY, STALL

    fleet = _fleet(workdir, f"cycle-rqs-{'ours' if ours else 'rq'}", url)
    try:
        if ours:
            argv = _py("-m", "celery_leader.integrations.rq", "scheduler", "--url", url, "-i", "1",
                       "-j", "tests.rq.stall.SlowJob")
        else:
            argv = _py("-m", "rq_scheduler.scripts.rqscheduler", "--url", url, "-i", "1",
                       "-j", "tests.rq.stall.SlowJob")
        fleet.spawn("worker", _py("-m", "rq.cli", "worker", "--url", url, "-w", "rq.SimpleWorker", fleet.queue))
        fleet.spawn("a", argv)
        fleet.spawn("b", argv)
        time.sleep(3.0)
        feeder = Scheduler(queue_name=fleet.queue, connection=fleet.redis)
        due = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=2)
        path = str(fleet.record)
        # one due second for all six; the stalling job's id sorts first, so it is loaded first
        ids = [feeder.enqueue_at(due, "tests.rq.jobs.record", path, job_id=f"0-stall-{fleet.tag}",
                                 meta={STALL: stall, KEY: f"{fleet.tag}:stall"}).id]
        ids += [feeder.enqueue_at(due, "tests.rq.jobs.record", path).id for _ in range(5)]
        due_ts = due.replace(tzinfo=timezone.utc).timestamp()
        _wait("every job to run once", lambda: set(ids) <= {r["id"] for r in fleet.runs()}, stall + 60)
        first_all = time.time()
        _wait("the stalled cycle to end", lambda: time.time() > due_ts + stall + 6, stall + 60, every=0.5)
        runs = fleet.runs()
        return {
            "scenario": "rq-scheduler",
            "tool": "celery-leader LeaderScheduler (defaults)" if ours else "rq-scheduler 0.14 (lock TTL 11 s)",
            "stall_s": stall,
            "jobs": len(ids),
            "runs": len(runs),
            "duplicates": _duplicates(runs),
            "all_ran_after_s": round(first_all - due_ts, 2),
        }
    finally:
        with contextlib.suppress(Exception):
            fleet.redis.delete("rq:scheduler:scheduled_jobs", "rq:scheduler_lock")
        fleet.cleanup()


# --- 2. several cron schedulers -------------------------------------------------------------


def _cron_config(fleet: Any, interval: int = 1) -> Path:
    config = fleet.workdir / f"cron_{fleet.tag.replace('-', '_')}.py"
    config.write_text(
        "from rq import cron\nfrom tests.rq.jobs import record\n"
        f"cron.register(record, {fleet.queue!r}, args=({str(fleet.record)!r},), interval={interval}, name={fleet.tag!r})\n"
    )
    return config


def _cron_rows(fleet: Any) -> list[tuple[float, str, int | None]]:
    from rq.job import Job

    entries = fleet.redis.zrange(f"rq:cron_job:{fleet.tag}:jobs", 0, -1, withscores=True)
    ids = [raw.decode() for raw, _ in entries]
    jobs = Job.fetch_many(ids, connection=fleet.redis) if ids else []
    return [(score, raw.decode(), (job.meta.get("celery_leader_token") if job is not None else None))
            for (raw, score), job in zip(entries, jobs)]


def _cron_counts(rows: list[tuple[float, str, Any]], interval: float, start: float, end: float) -> dict[str, Any]:
    """Duplicates: two enqueues closer than half the interval. Missed: slots skipped over.

    RQ's interval jobs are due ``interval`` after the *last enqueue* (its own rule), so a
    run that a failover made late shifts the following ones; only a gap of two intervals
    or more (a slot run late *and* coalesced with the next) counts as a missed run.
    """
    times = sorted(t for t, _, _ in rows if start <= t <= end)
    gaps = [b - a for a, b in zip(times, times[1:])]
    duplicates = sum(1 for g in gaps if g < interval / 2)
    missed = sum(max(0, int(g / interval) - 1) for g in gaps)
    return {"enqueues": len(times), "duplicates": duplicates, "slots": int((end - start) // interval),
            "missed": missed, "longest_gap_s": round(max(gaps), 2) if gaps else None}


def many_cron(workdir: Path, url: str, ours: bool, seconds: float) -> dict[str, Any]:
    fleet = _fleet(workdir, f"cron3-{'ours' if ours else 'rq'}", url)
    try:
        config = _cron_config(fleet)
        for i in range(3):
            if ours:
                argv = _py("-m", "celery_leader.integrations.rq", "cron", "--url", url, "--leader-name",
                           f"{fleet.tag}.cron", *FAST_FLAGS, str(config))
            else:
                argv = _py("-m", "rq.cli", "cron", "--url", url, str(config))
            fleet.spawn(f"c{i}", argv)
        _wait("first enqueue", lambda: _cron_rows(fleet), 60)
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        counts = _cron_counts(_cron_rows(fleet), 1.0, start, end)
        return {"scenario": "3 cron schedulers, every 1 s",
                "tool": "celery-leader-rq cron" if ours else "rq cron (RQ 3.0)", "seconds": round(end - start, 1),
                **counts}
    finally:
        fleet.cleanup()


# --- 3. failovers ---------------------------------------------------------------------------


class Feeder(threading.Thread):
    """Schedules a job every ``every`` s, due ``ahead`` s later (RQ's or rq-scheduler's API)."""

    def __init__(self, fleet: Any, rqscheduler: bool, every: float = 0.25, ahead: float = 1.0) -> None:
        super().__init__(daemon=True)
        from rq import Queue
        from rq_scheduler import Scheduler

        self.fleet, self.every, self.ahead = fleet, every, ahead
        self.rqs = Scheduler(queue_name=fleet.queue, connection=fleet.redis) if rqscheduler else None
        self.queue = Queue(fleet.queue, connection=fleet.redis)
        self.due: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        path = str(self.fleet.record)
        while not self.halt.wait(self.every):
            when = datetime.now(timezone.utc) + timedelta(seconds=self.ahead)
            if self.rqs is not None:
                job = self.rqs.enqueue_at(when.replace(tzinfo=None), "tests.rq.jobs.record", path)
            else:
                job = self.queue.enqueue_at(when, "tests.rq.jobs.record", path)
            self.due[job.id] = when.timestamp()


def _leader_name(fleet: Any, election: str) -> str | None:
    """The process (by name) whose process group holds ``election``."""
    from tests.rq.harness import pid_of_identity

    holder = fleet.holder(election)
    if not holder:
        return None
    if holder in fleet.procs:
        return holder
    with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
        group = os.getpgid(pid_of_identity(holder))
        for name, proc in fleet.procs.items():
            if proc.pid == group and proc.poll() is None:
                return name
    return None


def failovers(workdir: Path, url: str, kind: str, n: int, worker_runs: list[dict] | None = None) -> dict[str, Any]:
    """Ours: ``n`` failovers of the leader, SIGKILL / SIGTERM / SIGSTOP in turn.

    ``worker_runs``: a list that receives every run an RQ worker recorded (id, the token in
    ``job.meta``, when it ran); cron's jobs then get a worker too (otherwise only enqueued)."""
    fleet = _fleet(workdir, f"fo-{kind}", url)
    fleet.env.update(FAST)
    feeder = None
    takeovers: dict[str, list[float]] = {s.name: [] for s in SIGNALS}
    elected: dict[str, list[float]] = {s.name: [] for s in SIGNALS}
    counter = [0]

    def spawn() -> None:
        i = counter[0]
        counter[0] += 1
        if kind == "cron":
            fleet.spawn(f"p{i}", _py("-m", "celery_leader.integrations.rq", "cron", "--url", url, "--leader-name",
                                     election, "--identity", f"p{i}", *FAST_FLAGS, str(config)))
        elif kind == "worker":
            fleet.spawn(f"p{i}", _py("-m", "rq.cli", "worker", "--url", url, "-w",
                                     "celery_leader.integrations.rq.LeaderSimpleWorker", "--with-scheduler", fleet.queue))
        else:
            fleet.spawn(f"p{i}", _py("-m", "celery_leader.integrations.rq", "scheduler", "--url", url, "-i", "0.5",
                                     "--identity", f"p{i}", "--leader-name", election, *FAST_FLAGS))

    try:
        if kind == "cron":
            config = _cron_config(fleet)
            election = f"{fleet.tag}.cron"
        elif kind == "worker":
            election = f"rq.scheduler.{fleet.queue}"
        else:
            election = f"{fleet.tag}.rqs"
        if kind != "cron" or worker_runs is not None:
            fleet.spawn("worker", _py("-m", "rq.cli", "worker", "--url", url, "-w", "rq.SimpleWorker", fleet.queue))
        if kind != "cron":
            feeder = Feeder(fleet, rqscheduler=kind == "rqscheduler")
            feeder.start()
        for _ in range(3):
            spawn()

        def latest_token() -> int:
            if kind == "cron":
                return max((tok or 0 for _, _, tok in _cron_rows(fleet)), default=0)
            return max((r["token"] or 0 for r in fleet.runs()), default=0)

        def first_after(token: int) -> float | None:
            if kind == "cron":
                times = [t for t, _, tok in _cron_rows(fleet) if (tok or 0) > token]
            else:
                times = [r["meta"]["celery_leader_sent_at"] for r in fleet.runs() if (r["token"] or 0) > token]
            return min(times) if times else None

        _wait("a first term at work", lambda: latest_token() > 0, 90)
        start = time.time()
        for i in range(n):
            sig = SIGNALS[i % 3]
            _wait("a leader process", lambda: _leader_name(fleet, election), 60)
            token = latest_token()
            time.sleep(0.3 + 0.7 * ((i * 0.618) % 1))  # not always right after a cycle
            # the leader is read again just before the signal: under load leadership can move
            # during the sleep, and signalling the previous holder left the loop waiting for a
            # change that never came ("no new leader within 60 s", found by the chaos runs)
            leader = _wait("a leader process", lambda: _leader_name(fleet, election), 60)
            at = time.time()
            holder = fleet.holder(election)
            fleet.signal(leader, sig, group=kind == "worker" and sig != signal.SIGTERM)
            while fleet.holder(election) in ("", holder):  # the lock changes hands
                if time.time() - at > 60:
                    raise AssertionError("no new leader within 60 s")
                time.sleep(0.005)
            elected[sig.name].append(time.time() - at)
            _wait("the next term to act", lambda t=token: first_after(t) is not None, 60)
            takeovers[sig.name].append(first_after(token) - at)
            if sig == signal.SIGSTOP:
                time.sleep(1.5)
                fleet.signal(leader, signal.SIGCONT, group=kind == "worker")
            else:
                fleet.wait_dead(leader, 30)
                spawn()
            time.sleep(1.0)
        end = time.time()
        if feeder is not None:
            feeder.halt.set()
            feeder.join()
            _wait("every job to run", lambda: len(set(feeder.due) - {r["id"] for r in fleet.runs()}) <= n, 90)
            time.sleep(2.0)
            runs = fleet.runs()
            ran = {r["id"] for r in runs}
            result = {"jobs": len(feeder.due), "duplicates": _duplicates(runs), "missed": len(set(feeder.due) - ran)}
            waits = [r["meta"]["celery_leader_sent_at"] - feeder.due[r["id"]] for r in runs if r["id"] in feeder.due]
            result["longest_wait_s"] = round(max(waits), 2)
        else:
            result = _cron_counts(_cron_rows(fleet), 1.0, start, end)
            if worker_runs is not None:  # the worker runs what was enqueued
                with contextlib.suppress(AssertionError):
                    _wait("the worker to run every cron job",
                          lambda: {i for _, i, _ in _cron_rows(fleet)} <= {r["id"] for r in fleet.runs()}, 30)
        if worker_runs is not None:
            worker_runs.extend(fleet.runs())
        names = {"cron": "celery-leader-rq cron", "worker": "LeaderSimpleWorker --with-scheduler",
                 "rqscheduler": "celery-leader-rq scheduler -i 0.5"}
        return {"kind": kind, "tool": names[kind], "failovers": n, "lease_s": 1.0, **result,
                "takeover_samples_s": {k: [round(v, 3) for v in vs] for k, vs in takeovers.items()},
                "takeover_s": {k: summary(vs) for k, vs in takeovers.items() if vs},
                "elected_samples_s": {k: [round(v, 3) for v in vs] for k, vs in elected.items()},
                "elected_s": {k: summary(vs) for k, vs in elected.items() if vs}}
    finally:
        if feeder is not None:
            feeder.halt.set()
        fleet.cleanup()


def plain_rqscheduler_kills(workdir: Path, url: str, n: int) -> dict[str, Any]:
    """rq-scheduler's own: three instances (``-i 0.5``), one SIGKILLed at a random moment ``n`` times."""
    fleet = _fleet(workdir, "fo-plain-rqs", url)
    argv = _py("-m", "rq_scheduler.scripts.rqscheduler", "--url", url, "-i", "0.5")
    feeder = None
    try:
        fleet.spawn("worker", _py("-m", "rq.cli", "worker", "--url", url, "-w", "rq.SimpleWorker", fleet.queue))
        for i in range(3):
            fleet.spawn(f"p{i}", argv)
        feeder = Feeder(fleet, rqscheduler=True)
        feeder.start()
        _wait("first runs", lambda: len(fleet.runs()) >= 3, 60)
        for i in range(n):
            victim = f"p{i}"
            time.sleep(1.0 + (i * 0.618) % 1)
            fleet.signal(victim, signal.SIGKILL)
            fleet.wait_dead(victim, 30)
            fleet.spawn(f"p{3 + i}", argv)
        time.sleep(3.0)
        feeder.halt.set()
        feeder.join()
        _wait("every job to run", lambda: set(feeder.due) <= {r["id"] for r in fleet.runs()}, 90)
        runs = fleet.runs()
        first_run = {}
        for r in runs:
            first_run.setdefault(r["id"], r["ran"])
        waits = [first_run[j] - due for j, due in feeder.due.items() if j in first_run]
        return {"kind": "rqscheduler", "tool": "rq-scheduler 0.14, -i 0.5 (lock TTL 10 s)", "failovers": n,
                "jobs": len(feeder.due), "duplicates": _duplicates(runs), "missed": len(set(feeder.due) - set(first_run)),
                "longest_wait_s": round(max(waits), 2), "note": "instances killed at random moments (no owner is recorded)"}
    finally:
        if feeder is not None:
            feeder.halt.set()
        with contextlib.suppress(Exception):
            fleet.redis.delete("rq:scheduler:scheduled_jobs", "rq:scheduler_lock")
        fleet.cleanup()


def plain_worker_kill(workdir: Path, url: str, cap: float) -> dict[str, Any]:
    """RQ's own: SIGKILL the worker whose scheduler holds RQ's lock; wait for another to move jobs."""
    fleet = _fleet(workdir, "fo-plain-worker", url)
    argv = _py("-m", "rq.cli", "worker", "--url", url, "-w", "rq.SimpleWorker", "--with-scheduler",
               "--maintenance-interval", "5", "--worker-ttl", "20", fleet.queue)
    feeder = None
    try:
        for i in range(3):
            fleet.spawn(f"p{i}", argv)
        feeder = Feeder(fleet, rqscheduler=False)
        feeder.start()
        _wait("first runs", lambda: len(fleet.runs()) >= 3, 60)
        owner = fleet.redis.get(f"rq:scheduler-lock:{fleet.queue}").decode()
        pid = int(fleet.redis.hget(f"rq:scheduler:{owner}", "pid"))
        group = os.getpgid(pid)
        victim = next(name for name, proc in fleet.procs.items() if proc.pid == group)
        at = time.time()
        fleet.signal(victim, signal.SIGKILL, group=True)
        count = len(fleet.runs())
        try:
            _wait("another worker to move jobs", lambda: len(fleet.runs()) > count + 1, cap, every=0.5)
            took: float | None = time.time() - at
        except AssertionError:
            took = None
        return {"kind": "worker", "tool": "RQ 3.0 --with-scheduler (lock TTL 61 s, maintenance every 5 s, worker TTL 20 s)",
                "failovers": 1, "takeover_s": {"SIGKILL": {"n": 1, "p50": took, "max": took}} if took else {},
                "cap_s": cap, "timed_out": took is None}
    finally:
        if feeder is not None:
            feeder.halt.set()
        fleet.cleanup()


# --- report ---------------------------------------------------------------------------------


def _plot(data: dict[str, Any]) -> bool:
    """``docs/img/rq.png``: duplicates beside RQ's own locks; ``rq-takeover.png``: failover times."""
    from benchmarks.plots import Series, _plt, draw_distributions

    series = []
    short = {"cron": "cron", "worker": "worker --with-scheduler", "rqscheduler": "rq-scheduler"}
    for fo in data.get("failovers", []):
        for what, key in (("first enqueue", "takeover_samples_s"), ("lock taken", "elected_samples_s")):
            for sig, values in fo.get(key, {}).items():
                if values:
                    series.append(Series(source=f"ours, {short[fo['kind']]}", label=f"{sig}: {what}",
                                         samples=[v * 1000 for v in values]))
    for peer in data.get("peers", []):
        stats = (peer.get("takeover_s") or {}).get("SIGKILL")
        if stats and stats.get("p50") is not None:
            series.append(Series(source=f"RQ's own, {short[peer['kind']]}", label="SIGKILL: first enqueue",
                                 p50=stats["p50"] * 1000, p99=stats["max"] * 1000))
    drawn = draw_distributions(series, "RQ schedulers: signal to the next scheduler (ours: lease 1 s)",
                               "milliseconds (log)", IMG.with_name("rq-takeover.png"))
    rows = [(f"{r['scenario']}: long cycle", r) for r in data.get("long_cycle", [])]
    rows += [("3 x cron, 1 job/s", r) for r in data.get("cron", [])]
    if not rows:
        return drawn
    plt = _plt()
    groups: dict[str, dict[str, int]] = {}
    for scenario, r in rows:
        side = "ours" if "celery-leader" in r["tool"] else "RQ's own"
        groups.setdefault(scenario, {})[side] = int(r["duplicates"])
    fig, ax = plt.subplots(figsize=(9, 3.2))
    names = list(groups)
    for k, (side, color) in enumerate((("RQ's own", "tab:red"), ("ours", "tab:blue"))):
        values = [groups[n].get(side, 0) for n in names]
        bars = ax.bar([x + (k - 0.5) * 0.38 for x in range(len(names))], values, 0.36, label=side, color=color)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("duplicate enqueues")
    ax.set_title("Duplicates: RQ's locks vs celery-leader on the same Redis", fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG, dpi=110)
    plt.close(fig)
    return True


def report(data: dict[str, Any]) -> str:
    cycle = table(
        [(r["scenario"], r["tool"], r["stall_s"], r["jobs"], r["runs"], r["duplicates"], r["all_ran_after_s"])
         for r in data.get("long_cycle", [])],
        ["scheduler", "tool", "stall s", "jobs due", "runs", "duplicate runs", "all ran after s"],
    )
    cron = table(
        [(r["tool"], r["seconds"], r["slots"], r["enqueues"], r["duplicates"], r["missed"]) for r in data.get("cron", [])],
        ["tool", "seconds", "slots", "enqueues", "duplicates", "missed"],
    )
    rows = []

    def cell(fo: dict[str, Any], sig: str) -> str:
        take, elected = fo.get("takeover_s", {}), fo.get("elected_s", {})
        if sig not in take:
            return "-"
        text = f"{take[sig]['p50']:.2f} / {take[sig]['max']:.2f}"
        return text + (f" (lock {elected[sig]['p50']:.2f})" if sig in elected else "")

    for fo in data.get("failovers", []):
        extra = (f"{fo['duplicates']} / {fo['missed']}" + (f" of {fo['jobs']} jobs" if "jobs" in fo
                 else f" of {fo['slots']} slots"))
        rows.append((fo["tool"], fo["failovers"], cell(fo, "SIGKILL"), cell(fo, "SIGTERM"), cell(fo, "SIGSTOP"), extra))
    for peer in data.get("peers", []):
        take = peer.get("takeover_s") or {}
        kill = (f"{take['SIGKILL']['p50']:.2f}" if "SIGKILL" in take else
                (f"none within {peer['cap_s']} s" if peer.get("timed_out") else "-"))
        extra = f"{peer['duplicates']} / {peer['missed']} of {peer['jobs']} jobs" if "jobs" in peer else "-"
        if "longest_wait_s" in peer:
            kill = f"longest job wait {peer['longest_wait_s']:.2f}"
        rows.append((peer["tool"], peer["failovers"], kill, "-", "-", extra))
    fo_table = table(rows, ["tool", "failovers", "SIGKILL p50 / max s", "SIGTERM p50 / max s", "SIGSTOP p50 / max s",
                            "duplicates / missed"])
    return f"### Long enqueue cycle\n\n{cycle}\n\n### Three cron schedulers\n\n{cron}\n\n### Failovers\n\n{fo_table}\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks rq", description=__doc__.split("\n")[0])
    parser.add_argument("--failovers", type=int, default=9, help="per kind (SIGKILL/SIGTERM/SIGSTOP in turn)")
    parser.add_argument("--worker-stall", type=float, default=70.0)
    parser.add_argument("--rqs-stall", type=float, default=15.0)
    parser.add_argument("--cron-seconds", type=float, default=12.0)
    parser.add_argument("--plain-worker-cap", type=float, default=90.0)
    parser.add_argument("--quick", action="store_true", help="skip the 70 s worker stall and RQ's worker takeover")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None,
                        help="run these parts and keep the others from the last results file")
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS) - ({"cycle-worker", "peer-worker"} if args.quick else set())
    # SIGTERM unwinds like Ctrl-C: every process started below is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.servers import free_port, running

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data: dict[str, Any] = {"long_cycle": [], "cron": [], "failovers": [], "peers": []}
    previous = RESULTS / "rq.json"
    if args.only and previous.exists():
        old = json.loads(previous.read_text())
        keep = {"cycle-rqs": ("long_cycle", "scenario", "rq-scheduler"),
                "cycle-worker": ("long_cycle", "scenario", "rq worker --with-scheduler"),
                "cron": ("cron", None, None), "peer-rqs": ("peers", "kind", "rqscheduler"),
                "peer-worker": ("peers", "kind", "worker")}
        for part, (section, key, value) in keep.items():
            if part not in parts:
                data[section] += [r for r in old.get(section, []) if key is None or r.get(key) == value]
        data["failovers"] = [f for f in old.get("failovers", []) if f"failovers-{f['kind']}" not in parts]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-rq-") as tmp, running(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port
    ):
        work = Path(tmp)
        print(f"private Redis on {url}")
        if "cycle-rqs" in parts:
            for ours in (False, True):
                data["long_cycle"].append(long_cycle_rqscheduler(work, url, ours, args.rqs_stall))
                print(json.dumps(data["long_cycle"][-1]))
        if "cycle-worker" in parts:
            for ours in (False, True):
                data["long_cycle"].append(long_cycle_worker(work, url, ours, args.worker_stall))
                print(json.dumps(data["long_cycle"][-1]))
        if "cron" in parts:
            for ours in (False, True):
                data["cron"].append(many_cron(work, url, ours, args.cron_seconds))
                print(json.dumps(data["cron"][-1]))
        for kind in ("cron", "worker", "rqscheduler"):
            if f"failovers-{kind}" in parts:
                data["failovers"].append(failovers(work, url, kind, args.failovers))
                print(json.dumps({k: v for k, v in data["failovers"][-1].items() if not k.endswith("samples_s")}))
        if "peer-rqs" in parts:
            data["peers"].append(plain_rqscheduler_kills(work, url, 3))
            print(json.dumps(data["peers"][-1]))
        if "peer-worker" in parts:
            data["peers"].append(plain_worker_kill(work, url, args.plain_worker_cap))
            print(json.dumps(data["peers"][-1]))
    order = {"cron": 0, "worker": 1, "rqscheduler": 2}
    data["failovers"].sort(key=lambda f: order.get(f["kind"], 9))
    data["seconds"] = round(time.time() - started, 1)
    data["versions"] = _versions()
    path = write_results("rq", data)
    text = report(data)
    print(text)
    print(f"results: {path}; plot: {'drawn' if _plot(data) else 'not drawn'} ({IMG})")
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("rq", "rq-scheduler", "django-rq", "redis"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
