"""Redis backend: renew latency vs the raw round trip, graceful handover, 1,000 elections in
one process, and takeover after SIGKILL/SIGTERM side by side with celery-redbeat's lock and
single-beat on the same Redis.

``python -m benchmarks redis [--reps N] [--skip-peers] [--elections N]``

Everything runs against a private ``redis-server`` on a free 127.0.0.1 port (no
persistence), so that other traffic does not blur the numbers. Writes
``benchmarks/results/redis.json`` and prints the Markdown for ``docs/bench-redis.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import redis

from benchmarks._common import (
    HANDOVER_SETTINGS,
    RenewTimes,
    free_port,
    handover_seconds,
    peer_missing,
    script,
    summary,
    table,
    wait_until,
    write_results,
)
from celery_leader import Election
from celery_leader.backends.redis import WRITE_SCRIPT, WRITE_SHA, RedisBackend
from celery_leader.record import LeaderRecord, encode_record

NAME = "redis"


@contextlib.contextmanager
def private_redis() -> Iterator[int]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(300):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# --- 1. renew latency -------------------------------------------------------------------


def raw_round_trips(port: int, n: int, pace: float = 0.0) -> list[float]:
    """The same EVALSHA the backend sends, through a plain redis-py client.

    ``pace``: seconds between calls. The engine renews every ``retry_period``, and a call
    after an idle pause costs more than one of a tight loop (CPU idle states, cold caches),
    so the fair baseline runs at the engine's cadence; the tight loop is reported too.
    """
    client = redis.Redis(port=port)
    client.script_load(WRITE_SCRIPT)
    tag = uuid.uuid4().hex[:8]
    key, fence = f"raw{tag}:lock:x", f"raw{tag}:fence:x"
    record = LeaderRecord(holder="raw", lease_duration=1.0, acquire_time=time.time(), renew_time=time.time(), transitions=1)
    raw = encode_record(record)
    version = ""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        status, version = client.evalsha(WRITE_SHA, 2, key, fence, version, raw, 1, 62000, "raw:changes", "x")
        out.append(time.perf_counter() - started)
        if pace:
            time.sleep(pace)
        version = version.decode()
        assert status == 1
    client.close()
    return out


def renew_latency(port: int, samples: int) -> dict[str, Any]:
    tight = raw_round_trips(port, samples)
    raw_before = raw_round_trips(port, samples // 2, pace=0.01)
    times = RenewTimes()
    e = Election(
        "renew", url=f"redis://127.0.0.1:{port}/0", identity="renewer",
        lease_duration=1.0, renew_deadline=0.6, retry_period=0.01, observer=times,
    )  # fmt: skip
    with e:
        e.wait_until_leader(10)
        wait_until(lambda: len(times.samples) >= samples, 120, 0.05)
    raw_after = raw_round_trips(port, samples // 2, pace=0.01)
    raw = raw_before + raw_after
    engine = summary(times.samples[:samples])
    baseline = summary(raw)
    return {
        "engine_renew_s": engine,
        "raw_evalsha_s": baseline,
        "raw_evalsha_tight_loop_s": summary(tight),
        "ratio_p50": engine["p50"] / baseline["p50"],
        "ratio_mean": engine["mean"] / baseline["mean"],
        "settings": "lease 1.0 s, renew_deadline 0.6 s, retry_period 0.01 s (a renewal every 10 ms)",
    }


# --- 2. graceful handover ---------------------------------------------------------------


def graceful_handovers(port: int, rounds: int) -> dict[str, Any]:
    times = handover_seconds(f"redis://127.0.0.1:{port}/0", rounds, "handover")
    return {"handover_s": summary(times), "settings": HANDOVER_SETTINGS}


# --- 3. many elections ------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def many_elections(port: int, n: int, seconds: float) -> dict[str, Any]:
    admin = redis.Redis(port=port)
    rss_before = _rss_mb()
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0?prefix=many:")
    elections = [
        Election(f"e{i}", backend=backend, identity=f"many-{i}", lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
        for i in range(n)
    ]
    t0 = time.monotonic()
    for e in elections:
        e.start()
    leading = wait_until(lambda: sum(e.is_leader for e in elections) == n, 120, 0.1)
    all_leading_s = time.monotonic() - t0
    time.sleep(2.5)  # settle into steady renewals
    stats0 = admin.info("commandstats")
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    stats1 = admin.info("commandstats")
    leaders = sum(e.is_leader for e in elections)
    clients = admin.info("clients")["connected_clients"]
    threads = threading.active_count()
    rss = _rss_mb()
    for e in elections:
        e._core.request_stop()  # ask everyone first, then wait: the releases overlap
        e._wake.set()
    for e in elections:
        e.stop(timeout=15)
    backend.close()
    wall = wall1 - wall0
    calls = sum(
        stats1.get(k, {}).get("calls", 0) - stats0.get(k, {}).get("calls", 0)
        for k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "elections": n,
        "all_leading": bool(leading),
        "seconds_until_all_lead": all_leading_s,
        "leaders_at_end": leaders,
        "round_trips_per_s": calls / wall,
        "cpu_percent_of_one_core": 100.0 * cpu / wall,
        "rss_mb": rss,
        "rss_growth_mb": rss - rss_before,
        "threads": threads,
        "redis_clients": clients,
        "measured_s": wall,
        "settings": "lease 15 s, renew_deadline 10 s, retry_period 2 s (the defaults); one shared backend",
    }


# --- 4. takeover side by side -----------------------------------------------------------

REDBEAT_APP = """
from celery import Celery
import os
app = Celery("benchbeat", broker=os.environ["BENCH_BROKER"])
app.conf.redbeat_redis_url = os.environ["BENCH_REDIS"]
app.conf.redbeat_key_prefix = os.environ["BENCH_PREFIX"]
if os.environ.get("BENCH_LOCK_TIMEOUT"):
    app.conf.redbeat_lock_timeout = int(os.environ["BENCH_LOCK_TIMEOUT"])
"""


class Contender:
    """How to start one candidate of a tool, and how to read who holds its lock."""

    def __init__(self, tool: str, profile: str, port: int, workdir: Path) -> None:
        self.tool, self.profile, self.port, self.workdir = tool, profile, port, workdir
        self.tag = uuid.uuid4().hex[:8]
        self.client = redis.Redis(port=port)

    def key(self) -> str:
        return {
            "celery-leader": f"b{self.tag}:lock:bench",
            "redbeat": f"rb{self.tag}::lock",
            "single-beat": f"SINGLE_BEAT_sb{self.tag}",
        }[self.tool]

    def argv_env(self, i: int) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        sleeper = [sys.executable, "-c", "import time; time.sleep(10**6)"]
        if self.tool == "celery-leader":
            timing = ["--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "2"]
            argv = [sys.executable, "-m", "celery_leader", "run", "--url",
                    f"redis://127.0.0.1:{self.port}/0?prefix=b{self.tag}:", "--name", "bench",
                    "--identity", f"c{i}", *timing, "--", *sleeper]  # fmt: skip
        elif self.tool == "redbeat":
            (self.workdir / "benchbeat.py").write_text(REDBEAT_APP)
            env.update(
                BENCH_BROKER=f"redis://127.0.0.1:{self.port}/1",
                BENCH_REDIS=f"redis://127.0.0.1:{self.port}/0",
                BENCH_PREFIX=f"rb{self.tag}:",
                PYTHONPATH=str(self.workdir),
            )
            argv = [sys.executable, "-m", "celery", "-A", "benchbeat", "beat", "-S", "redbeat.RedBeatScheduler",
                    "-l", "warning", "--pidfile=", f"--schedule={self.workdir / f'sched{i}'}"]  # fmt: skip
            if self.profile == "matched":
                env["BENCH_LOCK_TIMEOUT"] = "15"
                argv += ["--max-interval", "2"]
        else:
            env.update(
                SINGLE_BEAT_REDIS_SERVER=f"redis://127.0.0.1:{self.port}/0",
                SINGLE_BEAT_IDENTIFIER=f"sb{self.tag}",
                SINGLE_BEAT_HOST_IDENTIFIER=f"c{i}",
                SINGLE_BEAT_LOG_LEVEL="error",
            )
            if self.profile == "matched":
                env.update(SINGLE_BEAT_LOCK_TIME="15", SINGLE_BEAT_HEARTBEAT_INTERVAL="2")
            argv = [script("single-beat"), *sleeper]
        return argv, env

    def owner(self) -> bytes | None:
        value = self.client.get(self.key())
        if value is None:
            return None
        if self.tool == "celery-leader":
            import json

            holder = json.loads(value).get("holderIdentity", "")
            return holder.encode() if holder else None
        if self.tool == "single-beat":
            # "<fence>:<host identifier>:<pid>": the fence moves on every heartbeat
            return value.split(b":")[1]
        return value  # redbeat: redis-py Lock's random token


def takeover(tool: str, profile: str, sig: int, port: int, cap: float, workdir: Path) -> float | None:
    """Start two candidates, signal the holder, return seconds until the other holds the lock."""
    c = Contender(tool, profile, port, workdir)
    procs: list[subprocess.Popen] = []
    try:
        argv, env = c.argv_env(0)
        procs.append(subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        first = wait_until(c.owner, 60, 0.01)
        if first is None:
            raise RuntimeError(f"{tool} never took the lock")
        argv, env = c.argv_env(1)
        procs.append(subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(4.0 if tool == "redbeat" else 2.0)  # the standby is up and waiting
        assert c.owner() == first, f"{tool}: the lock moved before the fault"
        t0 = time.monotonic()
        if sig == signal.SIGKILL:
            os.killpg(procs[0].pid, signal.SIGKILL)  # the machine dies: the whole process group
        else:
            procs[0].send_signal(signal.SIGTERM)  # a service manager stops the main process
        got = wait_until(lambda: (o := c.owner()) is not None and o != first, cap, 0.002)
        return time.monotonic() - t0 if got else None
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(10)
        c.client.close()


def side_by_side(port: int, reps: int, cap: float) -> list[dict[str, Any]]:
    rows = []
    plan = [
        ("celery-leader", "default"),  # our defaults are the matched settings: 15 s lease, 2 s retry
        ("redbeat", "default"),
        ("redbeat", "matched"),
        ("single-beat", "default"),
        ("single-beat", "matched"),
    ]
    modules = {"redbeat": "redbeat", "single-beat": "singlebeat"}
    for tool in sorted(set(modules) & {t for t, _ in plan}):
        reason = peer_missing(tool, modules[tool])
        if reason:
            print(reason, flush=True)
            plan = [(t, p) for t, p in plan if t != tool]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for tool, profile in plan:
            for sig in (signal.SIGKILL, signal.SIGTERM):
                n = 1 if (tool, profile) == ("redbeat", "default") else reps
                values = [takeover(tool, profile, sig, port, cap, Path(tmp)) for _ in range(n)]
                done = [v for v in values if v is not None]
                rows.append({
                    "tool": tool, "profile": profile, "signal": sig.name, "runs": n,
                    "timed_out": n - len(done), "cap_s": cap, "takeover_s": summary(done) if done else None,
                })  # fmt: skip
                print(f"  {tool:13} {profile:8} {sig.name:7} {[round(v, 3) if v else None for v in values]}", flush=True)
    return rows


SETTINGS = {
    ("celery-leader", "default"): "lease 15 s, renew_deadline 10 s, retry_period 2 s (defaults), release on SIGTERM, pub/sub",
    ("redbeat", "default"): "lock timeout 5 x beat max_interval = 1500 s, standby polls every 300 s",
    ("redbeat", "matched"): "redbeat_lock_timeout=15, --max-interval 2",
    ("single-beat", "default"): "LOCK_TIME=5, HEARTBEAT_INTERVAL=1",
    ("single-beat", "matched"): "LOCK_TIME=15, HEARTBEAT_INTERVAL=2",
}


def markdown(data: dict[str, Any], command: str) -> str:
    r, h, m = data["renew"], data["handover"], data["many"]
    out = [
        "# Redis backend benchmarks",
        "",
        f"Produced by `{command}` on {data['machine']['cores']} cores ({data['machine']['cpu']}), "
        f"Python {data['machine']['python']}, {data['machine']['when']}, against a private `redis-server` "
        f"({data['redis_version']}) on 127.0.0.1. Raw numbers: `benchmarks/results/redis.json`.",
        "",
        "## Renew latency: engine vs raw round trip",
        "",
        table(
            [
                ["engine renewal (Election, observer-timed)", r["engine_renew_s"]["p50"] * 1e3, r["engine_renew_s"]["p99"] * 1e3, r["engine_renew_s"]["mean"] * 1e3],
                ["raw EVALSHA of the same script (redis-py), one every 10 ms", r["raw_evalsha_s"]["p50"] * 1e3, r["raw_evalsha_s"]["p99"] * 1e3, r["raw_evalsha_s"]["mean"] * 1e3],
                ["raw EVALSHA, tight loop (for reference)", r["raw_evalsha_tight_loop_s"]["p50"] * 1e3, r["raw_evalsha_tight_loop_s"]["p99"] * 1e3, r["raw_evalsha_tight_loop_s"]["mean"] * 1e3],
            ],
            ["", "p50 ms", "p99 ms", "mean ms"],
        ),
        "",
        f"Ratio engine / raw at the same cadence (p50): **{r['ratio_p50']:.2f}** (target <= 1.3); ratio of means "
        f"{r['ratio_mean']:.2f}. {r['settings']}. The engine's time runs from just before the backend call to "
        "after the state machine recorded the result (the driver's metrics observer).",
        "",
        "## Graceful handover",
        "",
        f"{h['handover_s']['n']} handovers ({h['settings']}): the leader's `stop()` is called, it releases, "
        "the release is published, a follower wakes, reads and takes the lock.",
        "",
        table([[h["handover_s"]["p50"] * 1e3, h["handover_s"]["p99"] * 1e3, h["handover_s"]["max"] * 1e3]], ["p50 ms", "p99 ms", "max ms"]),
        "",
        "Target: p50 under 20 ms.",
        "",
        f"## {m['elections']} elections in one process",
        "",
        table(
            [[m["elections"], f"{m['seconds_until_all_lead']:.1f}", m["leaders_at_end"], f"{m['round_trips_per_s']:.0f}",
              f"{m['cpu_percent_of_one_core']:.1f}", f"{m['rss_mb']:.0f}", f"{m['rss_growth_mb']:.0f}", m["threads"], m["redis_clients"]]],
            ["elections", "s until all lead", "leading at end", "round trips/s", "CPU % of one core", "RSS MB", "RSS growth MB", "threads", "Redis clients"],
        ),  # fmt: skip
        "",
        f"{m['settings']}; measured over {m['measured_s']:.0f} s of steady state.",
        "",
        "## Takeover after SIGKILL and SIGTERM, side by side on the same Redis",
        "",
        "Two candidates of each tool; the holder is signalled (SIGKILL: its whole process group, as if the "
        "machine died; SIGTERM: the main process, as a service manager does); the time is until the other "
        "candidate holds the tool's lock key in Redis. `timed out` means no takeover within the cap.",
        "",
    ]
    rows = []
    for row in data["peers"]:
        t = row["takeover_s"]
        rows.append([
            row["tool"], row["profile"], row["signal"], row["runs"],
            f"{t['p50']:.3f}" if t else "-", f"{t['max']:.3f}" if t else "-",
            f"{row['timed_out']} (cap {row['cap_s']:.0f} s)" if row["timed_out"] else "0",
            SETTINGS[(row["tool"], row["profile"])],
        ])  # fmt: skip
    out.append(table(rows, ["tool", "profile", "signal", "runs", "p50 s", "max s", "timed out", "settings"]))
    out += [
        "",
        "Reading the numbers:",
        "",
        "- After SIGKILL every tool has to wait for its lease/lock timeout: the takeover time is the",
        "  configured lease (ours: a follower waits one lease after it last saw the record change).",
        "- After SIGTERM ours releases and the follower is woken by the pub/sub notification: milliseconds.",
        "  redbeat releases too, but its standby only retries every `max_interval`; single-beat does not",
        "  release at all, so its standby waits for the key to expire.",
        "- redbeat at its defaults cannot take over within the cap (its lock lives 25 minutes, its standby",
        "  sleeps 5 minutes between attempts). single-beat's `INITIAL_LOCK_TIME` (2 x `LOCK_TIME`) explains",
        "  its longer worst case when the kill comes before its first heartbeat.",
        "- The renew ratio compares the engine with the same EVALSHA sent by plain redis-py at the same",
        "  cadence (one every 10 ms); a tight loop of round trips is faster for both (warm CPU and caches).",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks redis")
    parser.add_argument("--reps", type=int, default=3, help="runs per takeover scenario")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds to wait for a takeover")
    parser.add_argument("--samples", type=int, default=1000, help="renewals to time")
    parser.add_argument("--handovers", type=int, default=100)
    parser.add_argument("--elections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="steady state measured with many elections")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite docs/bench-redis.md from the saved results")
    args = parser.parse_args(argv)
    if args.markdown_only:
        import json

        saved = json.loads((Path(__file__).parent / "results" / f"{NAME}.json").read_text())
        text = markdown(saved, saved["command"])
        (Path(__file__).parent.parent / "docs" / "bench-redis.md").write_text(text)
        print(text)
        return 0
    command = "python -m benchmarks redis " + " ".join(argv)
    data: dict[str, Any] = {}
    with private_redis() as port:
        data["redis_version"] = redis.Redis(port=port).info("server")["redis_version"]
        print("renew latency...", flush=True)
        data["renew"] = renew_latency(port, args.samples)
        print("graceful handovers...", flush=True)
        data["handover"] = graceful_handovers(port, args.handovers)
        print(f"{args.elections} elections...", flush=True)
        data["many"] = many_elections(port, args.elections, args.seconds)
        data["peers"] = [] if args.skip_peers else side_by_side(port, args.reps, args.cap)
    data["command"] = command.strip()
    path = write_results(NAME, data)
    from benchmarks._common import machine

    text = markdown({**data, "machine": machine()}, command.strip())
    print(text)
    if not args.skip_peers:
        (Path(__file__).parent.parent / "docs" / "bench-redis.md").write_text(text)
    print(f"results: {path}")
    return 0
