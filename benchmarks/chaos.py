"""Fault injection: does it ever give two leaders, and how long is there none?

``python -m benchmarks chaos [--backend NAME ...] [--duration S] [--seed N] [--rounds R | --until HH:MM]``

N candidates run through ``celery-leader run`` (their child logs each term with its
token). Faults are drawn from a seeded schedule, one at a time, each followed by recovery.
Common to every backend:

* ``kill``: SIGKILL the leader's ``run`` (its child dies with it); restarted later;
* ``term``: SIGTERM the leader (graceful release); restarted later;
* ``pause``: SIGSTOP the leader and its child for 1.5-3 leases, then SIGCONT.

Each backend's environment (:mod:`benchmarks._chaos_envs`) adds the faults its users meet
(servers killed, connections black-holed or delayed through a proxy per candidate, answers
lost after the write landed, watches cut, ref locks held, partitions ...); ``--list``
prints them. The checker (:mod:`celery_leader.testing.cluster`) reports overlapping terms
and token regressions (target 0) and, for each fault, the time without any leader against
the bound the design promises.

Every run appends one JSON file to ``benchmarks/results/chaos/`` (date, backend, seed,
timing, load, every fault with its gap and bound, terms, overlaps, regressions), so that
runs add up; ``--rounds``/``--until`` repeat runs with fresh seeds, each stored as soon as
it ends. ``python -m benchmarks chaos_report`` aggregates every stored run into
docs/benchmarks.md. A bounded run is part of the test suite (tests/chaos).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._chaos_envs import CANDIDATES, ENVIRONMENTS, SLACK, Environment, Timing
from benchmarks._common import RESULTS, machine, summary, table
from celery_leader.testing.cluster import ElectorCluster, Interval, Report, wait_dead

__all__ = ["ChaosResult", "EnvironmentStartError", "Fault", "run_chaos", "SLACK", "BACKENDS", "RUNS_DIR"]

BACKENDS = list(ENVIRONMENTS)
RUNS_DIR = RESULTS / "chaos"
COMMON = {
    "kill": "SIGKILL of the leader's run (restarted after the takeover)",
    "term": "SIGTERM of the leader (graceful release)",
    "pause": "SIGSTOP of the leader and its child for 1.5-3 leases, then SIGCONT",
}


class EnvironmentStartError(RuntimeError):
    """The backend's servers did not start (before any candidate or fault): e.g. a port
    found free was taken by another process before the server bound it."""


@dataclass
class Fault:
    kind: str
    node: int
    at: float  # wall time of injection
    detail: float = 0.0  # pause / outage length
    bound: float | None = None  # promised maximum time without a leader (None: no promise)
    leaderless: float = 0.0  # measured

    @property
    def within_bound(self) -> bool:
        return self.bound is None or self.leaderless <= self.bound


@dataclass
class ChaosResult:
    backend: str
    seed: int
    faults: list[Fault]
    report: Report
    timing: tuple[float, float, float]
    started: float = 0.0
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end
    candidates: int = 3
    notes: list[str] = field(default_factory=list)
    #: the end-to-end fence: writes, refused writes, terms with a refused write
    fenced: dict[str, int] = field(default_factory=dict)
    #: the shared process scenario's per-signal checks that failed (see ``_common_fault``)
    checks: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[Fault]:
        return [f for f in self.faults if not f.within_bound]

    @property
    def handovers(self) -> int:
        """Terms that followed a term of another candidate (leadership changed hands)."""
        ivs = self.report.intervals
        return sum(1 for a, b in zip(ivs, ivs[1:]) if a.node != b.node)

    def safety_lines(self) -> list[str]:
        """The overlaps and token regressions, one line each (empty: safe)."""
        try:
            self.report.assert_safe()
        except AssertionError as exc:
            return str(exc).splitlines()
        return []

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "backend": self.backend,
            "seed": self.seed,
            "candidates": self.candidates,
            "timing": {"lease": self.timing[0], "renew": self.timing[1], "retry": self.timing[2]},
            "seconds": round(self.seconds, 1),
            "load": list(self.load),
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "terms": len(self.report.intervals),
            "handovers": self.handovers,
            "overlaps": len(self.report.overlaps),
            "token_regressions": len(self.report.token_regressions),
            "duplicates": 0,
            "fenced": self.fenced,
            "faults": [asdict(f) | {"within_bound": f.within_bound} for f in self.faults],
            "notes": self.notes,
            "fault_checks": self.checks,
            "safety": self.safety_lines(),
            "machine": machine(),
            "commit": _commit(),
        }


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def store(result: dict[str, Any], runs_dir: Path = RUNS_DIR) -> Path:
    """Append one run to the results (one file per run: runs add up, nothing is overwritten)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    data = json.dumps(result, indent=1, sort_keys=True).encode()
    for n in range(1000):
        path = runs_dir / f"{stamp}-{result['backend']}-{result['seed']}{f'-{n}' if n else ''}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return path
    raise RuntimeError(f"{runs_dir}: no free name for this run")


class FencedStore:
    """A downstream store that refuses a write whose token is lower than the highest seen.

    What a fencing token buys: a leader that was frozen (GC pause, SIGSTOP, VM migration)
    wakes up believing it still leads; its writes carry its old token and are refused here.
    """

    def __init__(self) -> None:
        self.highest = -1
        self.accepted = 0
        self.refused = 0
        self.refused_tokens: Counter[int] = Counter()

    def write(self, token: int | None) -> bool:
        t = -1 if token is None else int(token)
        if t < self.highest:
            self.refused += 1
            self.refused_tokens[t] += 1
            return False
        self.highest = t
        self.accepted += 1
        return True


def fence_replay(paths: list[Path]) -> FencedStore:
    """Every line the candidates' children wrote (start, beat), in time order, through a
    :class:`FencedStore`: its refusals are the writes of a deposed leader (typically one
    that was frozen and woke up) that the fencing token stops."""
    writes: list[tuple[float, int]] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path) as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("e") in ("start", "beat"):
                    writes.append((ev["t"], ev["token"]))
    fence = FencedStore()
    for _, token in sorted(writes):
        fence.write(token)
    return fence


def _fence_children(cluster: ElectorCluster, url: str, backend: str) -> str | None:
    """Run :mod:`benchmarks._fenced_child` instead of the plain child: every term writes to
    ``url`` through ``celery_leader.fencing.redis.fenced_set``. (runasleader has its own command.)"""
    import uuid

    base = cluster.command
    probe = base(0)
    if "celery_leader.testing.child" not in probe:
        return None
    key = f"celery-leader-chaos:{backend}:{uuid.uuid4().hex[:8]}"

    def command(i: int) -> list[str]:
        argv = base(i)
        argv[argv.index("celery_leader.testing.child")] = "benchmarks._fenced_child"
        return [*argv, url, key]

    cluster.command = command  # type: ignore[method-assign]
    root = str(Path(__file__).resolve().parents[1])
    cluster.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, cluster.env.get("PYTHONPATH", "")]))
    return key


def _drop_fence(url: str, key: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2)
        client.delete(key, f"{key}:fence")
        client.close()


def _count_lines(paths: list[Path], events: tuple[str, ...]) -> Counter[str]:
    found: Counter[str] = Counter({e: 0 for e in events})
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path) as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line).get("e")
                    if ev in events:
                        found[ev] += 1
    return found


def leaderless_after(fault: Fault, intervals: list[Interval], end_of_run: float) -> float:
    """Seconds from the fault until a leader ran again (0 if leadership was not interrupted)."""
    t = fault.at
    current = [iv for iv in intervals if iv.start <= t <= iv.end]
    if current and all(iv.effective_end >= min(t + fault.detail + 0.5, end_of_run) for iv in current):
        later = [iv for iv in intervals if iv.start > t]
        if not later or later[0].start > current[0].effective_end:
            return 0.0  # the same term survived the fault
    ended = max((iv.effective_end for iv in current), default=t)
    later_starts = [iv.start for iv in intervals if iv.start >= max(t, ended - 1e-3)]
    return (min(later_starts) if later_starts else end_of_run) - t


def _runs_celery_leader(cluster: ElectorCluster) -> bool:
    """The candidates are ``celery-leader run`` processes (runasleader has its own command)."""
    return cluster.command(0)[1:4] == ["-m", "celery_leader", "run"]


#: what a stop logs about the lock (celery_leader.core, celery_leader.election; docs/design.md,
#: "Lifecycle"): released, or not ours any more; or left to its lease
_RELEASED = ("released the lock", "nothing to release")
_LEFT_TO_LEASE = ("could not release the lock within renew_deadline; it will expire",
                  "the release did not finish in time; the lease will expire")  # fmt: skip


def _led_when_signalled(said: str, name: str) -> bool | None:
    """Did the ``run`` whose log is ``said`` lead when its SIGTERM came? By its own log's order:
    its last "started leading" or "stopped leading" line before "received SIGTERM" (``None``:
    the log shows no signal)."""
    leading: bool | None = None
    for line in said.splitlines():
        if "received SIGTERM" in line:
            return bool(leading)
        if f"{name}: " in line and " started leading" in line:
            leading = True
        elif f"{name}: " in line and " stopped leading" in line:
            leading = False
    return None


def _child_stopped_gently(said: str, name: str, terms: list[Interval]) -> bool:
    """Was the child of the term that the SIGTERM found stopped gently?

    That term is the one the ``run``'s log (``said``) names last before the signal, not
    simply the last one in the children's logs: a term that ends at its deadline (its child
    SIGKILLed, rightly) can be followed at once by the next one, whose child the signal may
    reach before it wrote its first line (seen under load, 35 ms after it started). Such a
    child left no record of its own; then the ``run``'s log speaks for it: after the signal,
    it stopped the child without resorting to SIGKILL."""
    token: int | None = None
    before, signalled, after = said.partition("received SIGTERM")
    if not signalled:
        return bool(terms) and terms[-1].stopped_cleanly
    for found in re.finditer(rf"{re.escape(name)}: .* started leading \(token (\d+)\)", before):
        token = int(found.group(1))
    term = next((iv for iv in terms if iv.token == token), None) if token is not None else (terms[-1] if terms else None)
    if term is not None:
        return term.stopped_cleanly
    return "did not stop in time: SIGKILL" not in after and re.search(r"stopped .* \(exit -?\d+\)", after) is not None


def _common_fault(kind: str, leader: int, rng: random.Random, cluster: ElectorCluster, t: Timing,
                  checks: list[str]) -> tuple[float, float]:  # fmt: skip
    """One common fault. What must hold for that signal (the shared process scenario's
    checks, :func:`celery_leader.testing.failover.kill_term_stop`) goes to ``checks`` when
    it does not: the SIGKILLed ``run``'s child dies with it; on SIGTERM ``run`` stops its
    child gently, releases the lock (its log says so) and exits 0."""
    standard = _runs_celery_leader(cluster)
    if kind == "kill":
        terms = cluster.terms(leader)
        child = terms[-1].pid if terms else None
        cluster.kill(leader)
        if standard and child is not None and not wait_dead(child, 5):
            checks.append(f"kill: the child {child} of node{leader}'s SIGKILLed run outlived it")
        cluster.wait_for_leader(timeout=60, exclude={leader})
        cluster.restart(leader)
        return 0.0, t.takeover
    if kind == "term":
        cluster.terminate(leader)
        cluster.wait_for_leader(timeout=60, exclude={leader})
        code = cluster.wait_exit(leader)
        if standard:
            out = cluster.workdir / f"node{leader}.{cluster.generation[leader] - 1}.out"
            said = out.read_text(errors="replace") if out.exists() else ""
            terms = cluster.terms(leader)
            if code != 0:
                checks.append(f"term: node{leader}'s run exited {code} on SIGTERM (not 0)")
            if _led_when_signalled(said, cluster.name) is False:
                # chosen as the leader, its term ended (a fault just before, e.g. a black hole
                # reaching its deadline) before the signal came: no child to stop, no lock to release
                print(f"term: node{leader}'s term had ended before the SIGTERM: its child and release are not checked",
                      flush=True)  # fmt: skip
            else:
                if not _child_stopped_gently(said, cluster.name, terms):
                    checks.append(f"term: node{leader}'s child was not stopped gently")
                # what became of the lock is said: released, or not ours any more (a fault just
                # before the signal ended the term, or the release landed and its answer was
                # lost), or left to its lease (the release did not finish within its bound: a
                # backend that did not answer in time, seen at a load average of 20)
                if not any(f"{cluster.name}: {text}" in said for text in _RELEASED):
                    if any(f"{cluster.name}: {text}" in said for text in _LEFT_TO_LEASE):
                        print(f"term: node{leader}'s release did not finish in time; the lock was left to its lease",
                              flush=True)  # fmt: skip
                    else:
                        checks.append(f"term: node{leader}'s run logged neither the release, nor that the lock was not "
                                      f"its own, nor that it was left to its lease ({out})")  # fmt: skip
        cluster.restart(leader)
        return 0.0, t.poll + SLACK
    detail = t.lease * rng.uniform(1.5, 3.0)
    cluster.pause(leader, detail)
    return detail, t.takeover


def covering_plan(rng: random.Random, own: list[str], common: list[str], count: int) -> list[str]:
    """``count`` fault kinds for a bounded run, all drawn from ``rng`` (the seed replays the
    plan): every common kind (SIGKILL and SIGTERM of the leader, each a handover; a pause:
    the frozen leader that wakes up), then the backend's own kinds in an order drawn from
    ``rng`` (a count too small for all of them rotates which run by seed); cut at ``count``
    and shuffled. The common kinds are never cut (``count`` at least their number); repeats
    past one of each."""
    kinds = list(common) + rng.sample(own, len(own))
    if not kinds:
        raise ValueError("no fault kind to plan")
    if count < len(common):
        raise ValueError(f"{count} faults cannot cover {', '.join(common)}")
    plan = (kinds * (count // len(kinds) + 1))[:count]
    rng.shuffle(plan)
    return plan


def run_chaos(
    backend: str = "file",
    duration: float = 60.0,
    seed: int | None = None,
    n: int | None = None,
    workdir: Path | None = None,
    kinds: tuple[str, ...] | None = None,
    max_faults: int | None = None,
    keep_going: bool = False,
    fence_url: str | None = None,
    cover: bool = False,
) -> ChaosResult:
    """One run: start the environment and the candidates, inject faults for ``duration`` s
    (or until ``max_faults``). ``cover`` (with ``max_faults``): the kinds follow
    :func:`covering_plan` (kill, term, pause and the backend's own kinds) instead of
    independent draws."""
    if backend not in ENVIRONMENTS:
        raise SystemExit(f"unknown backend {backend!r}: choose {', '.join(BACKENDS)}")
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    n = n or CANDIDATES.get(backend, 3)
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"celery-leader-chaos-{backend}-")) if workdir is None else workdir
    env_cls = ENVIRONMENTS[backend]
    allowed = [k for k in [*COMMON, *env_cls.faults] if not kinds or k in kinds]
    plan = None
    if cover and max_faults:
        plan = covering_plan(rng, [k for k in env_cls.faults if k in allowed], [k for k in COMMON if k in allowed],
                             max_faults)  # fmt: skip
    t = env_cls.timing
    faults: list[Fault] = []
    notes: list[str] = []
    checks: list[str] = []
    fence_key: str | None = None
    load0 = os.getloadavg()[0]
    started = time.time()
    env: Environment = env_cls(workdir, n)
    try:
        env.start()
    except BaseException as exc:  # tests/servers.py's "unavailable" is pytest's skip or fail
        with contextlib.suppress(Exception):  # what did start (one member of three ...) stops
            env.stop()
        if isinstance(exc, Exception):
            raise EnvironmentStartError(f"{backend}: the environment did not start: {exc!r}") from exc
        raise
    try:
        cluster = env.cluster("chaos", workdir=workdir / "nodes", lease_duration=t.lease, renew_deadline=t.renew,
                              retry_period=t.retry, grace=t.lease)  # fmt: skip
        if fence_url:
            fence_key = _fence_children(cluster, fence_url, backend)
        with cluster:
            try:
                cluster.wait_for_leader(timeout=60)
                t0 = time.monotonic()
                while time.monotonic() - t0 < duration and (max_faults is None or len(faults) < max_faults):
                    for i, proc in enumerate(cluster.procs):  # runasleader exits when its term ends
                        if proc is not None and proc.poll() is not None:
                            cluster.restart(i)
                    leader = cluster.wait_for_leader(timeout=120)
                    kind = plan[len(faults)] if plan else rng.choice(allowed)
                    fault = Fault(kind, leader, time.time())
                    faults.append(fault)
                    if kind in COMMON:
                        fault.detail, fault.bound = _common_fault(kind, leader, rng, cluster, t, checks)
                    else:
                        done = env.inject(kind, leader, rng, cluster)
                        fault.detail, fault.bound = done.detail, done.bound
                    time.sleep(rng.uniform(0.2, 1.0))
                cluster.wait_for_leader(timeout=120)  # the last fault's gap ends inside the run
            except AssertionError as exc:  # no leader for minutes: a finding, stored with the run
                if not keep_going:
                    raise
                notes.append(f"run stopped early: {exc}")
            end_of_run = time.time()
        report = cluster.check()
        fence = fence_replay([cluster.log_path(i) for i in range(n)])
        fence_lines = _count_lines([cluster.log_path(i) for i in range(n)], ("refused", "fence-error"))
    finally:
        env.stop()
        if fence_url and fence_key:
            _drop_fence(fence_url, fence_key)
    for fault in faults:
        fault.leaderless = leaderless_after(fault, report.intervals, end_of_run)
    result = ChaosResult(backend, seed, faults, report, (t.lease, t.renew, t.retry), started,
                         time.time() - started, (load0, os.getloadavg()[0]), n, notes, checks=checks)  # fmt: skip
    result.fenced = {"writes": fence.accepted + fence.refused, "refused": fence.refused,
                     "refused_terms": len(fence.refused_tokens)}
    if fence_key:
        # the real helper's verdicts: terms whose Redis write was refused (one line each)
        result.fenced |= {"redis_refused_terms": fence_lines["refused"], "redis_errors": fence_lines["fence-error"]}
    if own_dir:
        if report.safe and not notes and not checks:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            result.notes.append(f"logs kept in {workdir}")
    return result


def print_result(result: ChaosResult) -> None:
    rows = []
    for kind in sorted({f.kind for f in result.faults}):
        of_kind = [f for f in result.faults if f.kind == kind]
        s = summary([f.leaderless for f in of_kind])
        bounds = [f.bound for f in of_kind if f.bound is not None]
        rows.append([kind, s["n"], s["p50"], s["max"], max(bounds) if bounds else "-", sum(not f.within_bound for f in of_kind)])
    print(f"\n## chaos: {result.backend} (seed {result.seed}, {result.seconds:.0f} s, load {result.load[0]:.1f}-"
          f"{result.load[1]:.1f}, {len(result.report.intervals)} terms, {len(result.report.overlaps)} overlaps, "
          f"{len(result.report.token_regressions)} token regressions, fence refused "
          f"{result.fenced.get('refused', 0)} late writes of {result.fenced.get('refused_terms', 0)} deposed terms)")  # fmt: skip
    print(table(rows, ["fault", "n", "leaderless p50 s", "leaderless max s", "bound s", "over bound"]), flush=True)
    if result.fenced:
        print("fence: " + ", ".join(f"{k} {v}" for k, v in result.fenced.items()), flush=True)
    for line in result.checks:
        print(f"failed check: {line}")
    for note in result.notes:
        print(note)


def _deadline(until: str | None) -> float | None:
    if not until:
        return None
    hh, mm = (int(x) for x in until.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if end <= now:
        end += datetime.timedelta(days=1)
    return end.timestamp()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default all")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults per run")
    parser.add_argument("--seed", type=int, default=None, help="the first run's seed (then seed+1, ...)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per backend, each stored when it ends")
    parser.add_argument("--until", default=None, help="HH:MM UTC: keep starting runs until then")
    parser.add_argument("--kind", action="append", help="only these fault kinds (repeatable)")
    parser.add_argument("--fence-url", default="redis://127.0.0.1:6379/0",
                        help="Redis for the children's fenced writes (celery_leader.fencing.redis); 'none': off")
    parser.add_argument("--max-faults", type=int, default=None,
                        help="end a run after N >= 3 faults (a covering plan: kill, term, pause, then the backend's own kinds)")
    parser.add_argument("--no-store", action="store_true", help="do not write benchmarks/results/chaos/")
    parser.add_argument("--json", type=Path, default=None, help="also append each run's result here (one JSON line)")
    parser.add_argument("--list", action="store_true", help="print every backend's fault kinds and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, env in ENVIRONMENTS.items():
            print(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in {**COMMON, **env.faults}.items()))
        return 0
    # SIGTERM unwinds like Ctrl-C: candidates, servers, proxies and partitions are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = _deadline(args.until)
    ok = True
    seed = args.seed
    rounds = 0
    while True:
        for backend in args.backend or BACKENDS:
            if deadline is not None and time.time() + args.duration > deadline:
                return 0 if ok else 1
            run_seed = random.randrange(1 << 30) if seed is None else seed
            print(f"chaos: {backend}, seed {run_seed}", flush=True)
            try:
                result = run_chaos(backend, args.duration, run_seed, kinds=tuple(args.kind or ()), keep_going=True,
                                   fence_url=None if args.fence_url == "none" else args.fence_url,
                                   max_faults=args.max_faults, cover=args.max_faults is not None)
            except Exception as exc:  # noqa: BLE001 - a server that would not start: the next run may
                print(f"chaos: {backend} seed {run_seed} failed to run: {exc!r}", flush=True)
                continue
            print_result(result)
            if args.json is not None:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(result.as_dict(), sort_keys=True) + "\n")
            if not args.no_store:
                print(f"stored {store(result.as_dict())}", flush=True)
            ok = ok and result.report.safe and not result.checks
            if seed is not None:
                seed += 1
        rounds += 1
        if deadline is None and rounds >= args.rounds:
            return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
