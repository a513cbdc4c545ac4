"""Fault injection on the integrations, counted from the worker's side.

``python -m benchmarks chaos_integrations [--integration NAME ...] [--duration S] [--seed N] [--rounds R | --until HH:MM]``

* ``celery-beat``: three ``celery beat -S leader`` and one worker, a task every 0.5 s; the
  task records the fencing token and identity of the beat that sent it;
* ``apscheduler``: three processes with a guarded BackgroundScheduler (tests/apscheduler/app.py),
  a job every 0.5 s that records its token;
* ``rq-cron``, ``rq-worker``, ``rq-scheduler``: RQ's schedulers behind celery-leader (the
  failover loop of ``benchmarks/rq.py`` on a private redis-server: SIGKILL, SIGTERM,
  SIGSTOP of the leader in turn; duplicates and missed jobs counted from RQ's workers).

(``runasleader`` runs as a backend of ``python -m benchmarks chaos --backend runasleader``:
its command logs its own term like the harness's child.)

Faults: SIGKILL, SIGTERM, SIGSTOP past the lease of the leading process (its process
group), drawn from a seeded schedule. Counted: failovers (the sender changed), duplicates
(two sends of the task closer than half its interval), token regressions (a send with a
lower token than the one before it), late sends (a send whose token is lower than one
already sent: a deposed leader still sending), and the end-to-end fence: every run, in the
order the workers executed them, writes to a store that refuses a token lower than the
highest it has seen (:class:`FencedStore`); its refusals are the stale-token runs that the
token stops. Each run is appended to ``benchmarks/results/chaos/`` like the backends'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._chaos_envs import Timing
from benchmarks._common import machine
from benchmarks.chaos import FencedStore, _deadline, store

ROOT = Path(__file__).resolve().parents[1]
TIMING = Timing()
INTERVAL = 0.5


@dataclass
class Run:
    sent: float  # when the scheduler sent / ran it
    ran: float  # when the worker executed it
    node: int
    token: int | None


class _Fleet:
    """Three scheduler processes of one integration and the runs their workers record."""

    name = ""
    #: False: each process schedules on its own clock (see :func:`analyse`)
    shared_schedule = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:8]
        self.procs: dict[int, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}  # fmt: skip

    def _popen(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip

    def start(self) -> None:
        for i in range(3):
            self.spawn(i)

    def spawn(self, i: int) -> None:
        raise NotImplementedError

    def runs(self) -> list[Run]:
        raise NotImplementedError

    def signal(self, i: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[i].pid, sig)

    def wait_exit(self, i: int, timeout: float = 20.0) -> None:
        try:
            self.procs[i].wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(i, signal.SIGKILL)
            self.procs[i].wait(10)

    def stop(self) -> None:
        for i in list(self.procs):
            self.signal(i, signal.SIGCONT)
            self.signal(i, signal.SIGTERM)
        for i in list(self.procs):
            self.wait_exit(i, 15)


class CeleryBeatFleet(_Fleet):
    name = "celery-beat"
    shared_schedule = True

    def start(self) -> None:
        from tests.celery.harness import Deployment

        self.dep = Deployment(self.workdir, f"redis://127.0.0.1:6379/0?prefix=chaos-{self.tag}:",
                              "redis://127.0.0.1:6379/0", CLT_INTERVAL=str(INTERVAL))  # fmt: skip
        self.dep.worker("w1")
        super().start()

    def spawn(self, i: int) -> None:
        self.procs[i] = self.dep.beat(f"beat{i}")

    def runs(self) -> list[Run]:
        return [Run(r["sent"], r["start"], int(r["identity"][4:]), r["token"])
                for r in self.dep.runs() if r.get("sent") is not None and r.get("identity")]  # fmt: skip

    def stop(self) -> None:
        self.dep.stop()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_timeout=2)
            keys = [*client.scan_iter(match=f"chaos-{self.tag}:*"), self.dep.queue]
            client.delete(*keys)
            client.close()


class APSchedulerFleet(_Fleet):
    name = "apscheduler"
    shared_schedule = False

    def spawn(self, i: int) -> None:
        argv = [sys.executable, "-m", "tests.apscheduler.app", "--url", f"redis://127.0.0.1:6379/0?prefix=chaos-{self.tag}:",
                "--name", "chaos-aps", "--identity", f"aps{i}", "--log", str(self.workdir / f"aps{i}.jsonl")]  # fmt: skip
        self.procs[i] = self._popen(argv, self.workdir / f"aps{i}.out")

    def runs(self) -> list[Run]:

        out = []
        for i in range(3):
            with contextlib.suppress(FileNotFoundError), open(self.workdir / f"aps{i}.jsonl") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        ev = json.loads(line)
                        if ev.get("e") == "run":
                            out.append(Run(ev["t"], ev["t"], i, ev.get("token")))
        return out

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_timeout=2)
            keys = list(client.scan_iter(match=f"chaos-{self.tag}:*"))
            if keys:
                client.delete(*keys)
            client.close()


FLEETS: dict[str, type[_Fleet]] = {f.name: f for f in (CeleryBeatFleet, APSchedulerFleet)}
RQ_KINDS = {"rq-cron": "cron", "rq-worker": "worker", "rq-scheduler": "rqscheduler"}
INTEGRATIONS = [*FLEETS, *RQ_KINDS]


def _wait(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def token_counts(runs: list[Run]) -> dict[str, Any]:
    """The tokens as the workers saw them: regressions and late sends (in the order sent),
    stale-token runs (in the order run: a token lower than one the worker already ran,
    what a :class:`FencedStore` refuses), terms, runs without a token."""
    by_sent = sorted(runs, key=lambda r: r.sent)
    regressions = sum(1 for a, b in zip(by_sent, by_sent[1:]) if (b.token or -1) < (a.token or -1))
    highest, late = -1, 0
    for r in by_sent:
        if (r.token or -1) < highest:
            late += 1
        highest = max(highest, r.token or -1)
    fence = FencedStore()
    for r in sorted(runs, key=lambda r: r.ran):
        fence.write(r.token)
    return {"token_regressions": regressions, "late_sends": late, "terms": len({r.token for r in runs}),
            "fenced_refusals": fence.refused, "untokened_runs": sum(1 for r in runs if r.token is None)}


def analyse(runs: list[Run], interval: float, shared_schedule: bool = True) -> dict[str, Any]:
    """What the workers saw: failovers, duplicates, regressions, late sends, fenced runs.

    A duplicate is two sends closer than half the interval. With ``shared_schedule`` False
    (APScheduler: each process keeps its own clock for an interval job, so a new leader's
    first run may come any time after the old leader's last), only sends within one term
    count; two terms' runs close together are counted apart (``close_at_handover``)."""
    by_sent = sorted(runs, key=lambda r: r.sent)
    failovers = sum(1 for a, b in zip(by_sent, by_sent[1:]) if a.node != b.node)
    close = [(a, b) for a, b in zip(by_sent, by_sent[1:]) if b.sent - a.sent < interval / 2]
    duplicates = sum(1 for a, b in close if shared_schedule or a.token == b.token)
    return {"runs_counted": len(runs), "failovers": failovers, "duplicates": duplicates,
            "close_at_handover": len(close) - duplicates, **token_counts(runs)}  # fmt: skip


def rq_runs(records: list[dict[str, Any]]) -> list[Run]:
    """RQ workers' records (tests/rq/jobs.py ``record``): sent = the leader's
    ``celery_leader_sent_at`` stamp (else when it ran), node = the sender's identity."""
    from celery_leader.integrations.rq.config import META_IDENTITY, META_SENT_AT

    nodes: dict[str, int] = {}
    out = []
    for r in records:
        meta = r.get("meta") or {}
        node = nodes.setdefault(str(meta.get(META_IDENTITY)), len(nodes))
        sent = meta.get(META_SENT_AT)
        out.append(Run(float(sent) if sent is not None else r["ran"], r["ran"], node, r.get("token")))
    return out


def run_fleet(name: str, duration: float, seed: int, workdir: Path, max_faults: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    fleet = FLEETS[name](workdir)
    t = TIMING
    bound = t.takeover + INTERVAL
    faults: list[dict[str, Any]] = []
    notes: list[str] = []
    load0, started = os.getloadavg()[0], time.time()
    fleet.start()
    try:
        _wait("a first run", lambda: fleet.runs(), 90)
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration and (max_faults is None or len(faults) < max_faults):
            after = time.time()
            latest = _wait("a fresh run", lambda a=after: [r for r in fleet.runs() if r.sent > a - 0.01], 120)
            leader = max(latest, key=lambda r: r.sent).node
            kind = rng.choice(["kill", "term", "pause"])
            at = time.time()
            fault: dict[str, Any] = {"kind": kind, "node": leader, "at": at, "detail": 0.0, "bound": bound}
            faults.append(fault)
            try:
                if kind == "kill":
                    fleet.signal(leader, signal.SIGKILL)
                    _wait("a new leader", lambda at=at, leader=leader: [r for r in fleet.runs() if r.sent > at and r.node != leader], 120)
                    fleet.wait_exit(leader)
                    fleet.spawn(leader)
                elif kind == "term":
                    fleet.signal(leader, signal.SIGTERM)
                    _wait("a new leader", lambda at=at, leader=leader: [r for r in fleet.runs() if r.sent > at and r.node != leader], 120)
                    fleet.wait_exit(leader)
                    fleet.spawn(leader)
                else:
                    fault["detail"] = t.lease * rng.uniform(1.5, 3.0)
                    fleet.signal(leader, signal.SIGSTOP)
                    time.sleep(fault["detail"])
                    fleet.signal(leader, signal.SIGCONT)
            except AssertionError as exc:
                notes.append(f"run stopped early: {exc}")
                break
            time.sleep(rng.uniform(0.5, 1.5))
        time.sleep(3.0)  # the worker drains what was sent
    finally:
        fleet.stop()
    runs = fleet.runs()
    end = max((r.sent for r in runs), default=time.time())
    for fault in faults:
        later = [r.sent for r in runs if r.sent > fault["at"]]
        fault["leaderless"] = (min(later) if later else end) - fault["at"]
        fault["within_bound"] = fault["leaderless"] <= fault["bound"]
    return _result(name, seed, started, load0, faults, analyse(runs, INTERVAL, fleet.shared_schedule), notes)


def run_rq(name: str, duration: float, seed: int, workdir: Path, max_faults: int | None = None) -> dict[str, Any]:
    """RQ's schedulers through benchmarks/rq.py's failover loop (SIGKILL, SIGTERM, SIGSTOP in
    turn); tokens counted from the worker's side (the ``job.meta`` of every job it ran)."""
    from benchmarks.rq import failovers
    from tests.servers import free_port, running

    rounds = max_faults or max(3, int(duration / 4))
    port = free_port()
    load0, started = os.getloadavg()[0], time.time()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    records: list[dict[str, Any]] = []
    with running(argv, port):
        got = failovers(workdir, f"redis://127.0.0.1:{port}/0", RQ_KINDS[name], rounds, worker_runs=records)
    interval = 1.0 if name != "rq-scheduler" else 0.5
    names = {"SIGKILL": "kill", "SIGTERM": "term", "SIGSTOP": "pause"}
    faults = []
    for sig, samples in got["takeover_samples_s"].items():
        for value in samples:
            b = TIMING.takeover + interval
            faults.append({"kind": names[sig], "node": -1, "at": 0.0, "detail": 0.0, "bound": b,
                           "leaderless": value, "within_bound": value <= b})  # fmt: skip
    counted = {"runs_counted": len(records), "failovers": got["failovers"], "duplicates": got["duplicates"],
               "missed": got.get("missed"), **token_counts(rq_runs(records))}  # fmt: skip
    notes = ["benchmarks/rq.py failover loop: duplicates and missed from its counts; tokens from the job.meta "
             "of every job the RQ worker ran"]  # fmt: skip
    return _result(name, seed, started, load0, faults, counted, notes)


def _result(name: str, seed: int, started: float, load0: float, faults: list[dict[str, Any]],
            counted: dict[str, Any], notes: list[str]) -> dict[str, Any]:  # fmt: skip
    from benchmarks.chaos import _commit

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "backend": name, "integration": True, "seed": seed, "candidates": 3,
        "timing": {"lease": TIMING.lease, "renew": TIMING.renew, "retry": TIMING.retry, "interval": INTERVAL},
        "seconds": round(time.time() - started, 1), "load": [load0, os.getloadavg()[0]],
        "faults_by_kind": dict(Counter(f["kind"] for f in faults)), "overlaps": counted.get("late_sends") or 0,
        **counted, "faults": faults, "notes": notes, "machine": machine(), "commit": _commit(),
    }  # fmt: skip


def run_integration(name: str, duration: float, seed: int | None = None, workdir: Path | None = None,
                    max_faults: int | None = None) -> dict[str, Any]:  # fmt: skip
    seed = random.randrange(1 << 30) if seed is None else seed
    if name not in FLEETS and name not in RQ_KINDS:
        raise SystemExit(f"unknown integration {name!r}: choose {', '.join(INTEGRATIONS)}")
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"celery-leader-chaos-{name}-")) if workdir is None else workdir
    result = (run_fleet if name in FLEETS else run_rq)(name, duration, seed, workdir, max_faults)
    if own_dir:  # logs kept only when something is worth reading
        if result["duplicates"] or result["token_regressions"] or result.get("late_sends") or any("stopped early" in n for n in result["notes"]):
            result["notes"].append(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chaos_integrations", description=__doc__.split("\n")[0])
    parser.add_argument("--integration", action="append", choices=INTEGRATIONS, help="repeatable; default all")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--until", default=None, help="HH:MM UTC: keep starting runs until then")
    parser.add_argument("--max-faults", type=int, default=None,
                        help="end a run after N faults (RQ: N failovers instead of one per 4 s of --duration)")
    parser.add_argument("--no-store", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also append each run's result here (one JSON line)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = _deadline(args.until)
    seed, rounds, ok = args.seed, 0, True
    while True:
        for name in args.integration or INTEGRATIONS:
            if deadline is not None and time.time() + args.duration > deadline:
                return 0 if ok else 1
            run_seed = random.randrange(1 << 30) if seed is None else seed
            try:
                result = run_integration(name, args.duration, run_seed, max_faults=args.max_faults)
            except Exception as exc:  # noqa: BLE001 - the next run may work
                print(f"chaos: {name} seed {run_seed} failed to run: {exc!r}", flush=True)
                continue
            over = sum(not f["within_bound"] for f in result["faults"])
            print(f"{name} seed {run_seed}: {len(result['faults'])} faults, {result['failovers']} failovers, "
                  f"{result['duplicates']} duplicates, {result['token_regressions']} token regressions, "
                  f"late sends {result.get('late_sends')}, fenced {result.get('fenced_refusals')}, "
                  f"{over} gaps over the bound, load {result['load'][0]:.1f}", flush=True)  # fmt: skip
            ok = ok and not result["duplicates"] and not result["token_regressions"]
            if args.json is not None:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(result, sort_keys=True) + "\n")
            if not args.no_store:
                print(f"stored {store(result)}", flush=True)
            if seed is not None:
                seed += 1
        rounds += 1
        if deadline is None and rounds >= args.rounds:
            return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
