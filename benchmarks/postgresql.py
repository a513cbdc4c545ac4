"""postgresql:// backend: renewal against the raw conditional UPDATE, graceful handover
through LISTEN/NOTIFY (beside django:// on the same server), and crash takeover.

``python -m benchmarks postgresql [--n N] [--handovers N] [--crashes N] [--lease S]``

Runs against the PostgreSQL on 127.0.0.1:5432 (user postgres, trust) in a throwaway
database dropped at the end. Writes ``benchmarks/results/postgresql.json`` and prints the
Markdown for ``docs/bench-postgresql.md``.

1. Renewal: N renewals through ``PostgresLock.update`` (what a leader sends every
   ``retry_period``) interleaved with N raw ``UPDATE ... WHERE name = %s AND version = %s``
   on a plain psycopg 3 connection in autocommit (the floor), so both see the same load.
2. Graceful handover: three candidates (lease 10 s, retry 2 s); the leader's ``stop()``
   releases, the release's NOTIFY wakes a follower, which reads and takes the lock; the
   time runs from ``stop()`` to the new leader's ``on_started_leading``. The same on
   ``django://`` with the same database server.
3. Crash takeover: two ``celery-leader run`` processes; the holder's process group is
   SIGKILLed; the time runs to the row naming the other candidate.
4. A hung server: calls through a black-holed TCP proxy, timed until BackendUnavailable.
5. Batched renewals (issue 21): N elections renewed one by one (``PostgresLock.update``)
   and in batches (``PostgresBackend.update_many``, one statement per call); client CPU,
   server CPU (the server's backend processes, from /proc) and statements (round trips)
   per renewal. ``--only batch`` runs just this part and adds it to the existing results
   and docs/bench-postgresql.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import psycopg

from benchmarks import _batch
from benchmarks._common import RESULTS, handover_seconds, machine, summary, table, wait_until, write_results
from celery_leader.backends.postgresql import DEFAULT_TABLE, PostgresBackend
from celery_leader.record import LeaderRecord, encode_record

NAME = "postgresql"
DB_NAME = f"celery_leader_bench_{uuid.uuid4().hex[:8]}"
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def database() -> Iterator[str]:
    admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        admin.close()


# --- 1. renewal --------------------------------------------------------------------------


def renewal(url: str, n: int, warmup: int = 100) -> dict[str, Any]:
    record = LeaderRecord(holder="bench", lease_duration=15.0, acquire_time=time.time(), renew_time=time.time(), transitions=1)
    backend = PostgresBackend.from_url(url)
    lock = backend.lock("bench")
    version = lock.create(record, 5.0)
    raw_version = int(backend.lock("bench-raw").create(record, 5.0))
    conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=DB_NAME, autocommit=True)
    cur = conn.cursor()
    # the very statement the backend sends, on a plain connection: the floor
    sql = f"UPDATE {DEFAULT_TABLE} SET record = %s, version = %s, holder = %s, token = %s WHERE name = %s AND version = %s"
    ours: list[float] = []
    raw: list[float] = []
    for i in range(warmup + n):
        started = time.perf_counter()
        version = lock.update(record.evolve(renew_time=time.time()), version, 5.0)
        elapsed = time.perf_counter() - started
        body = encode_record(record.evolve(renew_time=time.time())).decode()
        started = time.perf_counter()
        cur.execute(sql, (body, raw_version + 1, "bench", 1, "bench-raw", raw_version))
        raw_elapsed = time.perf_counter() - started
        if cur.rowcount != 1:
            raise RuntimeError("raw conditional UPDATE lost its row")
        raw_version += 1
        if i >= warmup:
            ours.append(elapsed)
            raw.append(raw_elapsed)
    gets = []
    for _ in range(n):
        started = time.perf_counter()
        lock.get(5.0)
        gets.append(time.perf_counter() - started)
    conn.close()
    backend.close()
    o, r = summary(ours), summary(raw)
    return {"renew": o, "raw_update": r, "get": summary(gets), "ratio_p50": o["p50"] / r["p50"], "ratio_mean": o["mean"] / r["mean"]}


# --- 2. graceful handover ----------------------------------------------------------------


def handovers(url: str, rounds: int) -> dict[str, Any]:
    times = handover_seconds(url, rounds, f"handover-{uuid.uuid4().hex[:6]}")
    return {"handover_s": summary(times), "samples": times}


def django_handovers(rounds: int) -> dict[str, Any]:
    """The same on ``django://`` (LISTEN/NOTIFY too), Django configured in this process."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django_leader"],
            USE_TZ=True,
            DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": DB_NAME, "USER": "postgres",
                                   "HOST": "127.0.0.1", "PORT": "5432"}},
        )  # fmt: skip
        import django

        django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", "django_leader", verbosity=0)
    connections["default"].close()
    return handovers("django://default", rounds)


# --- 3. crash takeover -------------------------------------------------------------------


def holder(conn: Any, name: str) -> str | None:
    row = conn.execute(f"SELECT holder FROM {DEFAULT_TABLE} WHERE name = %s", [name]).fetchone()
    return row[0] if row and row[0] else None


def crash_takeover(url: str, lease: float) -> float | None:
    name = f"crash-{uuid.uuid4().hex[:6]}"
    renew, retry = lease * 2 / 3, lease * 2 / 15  # the defaults' proportions (15 / 10 / 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=DB_NAME, autocommit=True)
    procs: list[subprocess.Popen] = []

    def start(i: int) -> None:
        argv = [sys.executable, "-m", "celery_leader", "run", "--url", url, "--name", name, "--identity", f"c{i}",
                "--lease-duration", str(lease), "--renew-deadline", f"{renew:.3f}", "--retry-period", f"{retry:.3f}",
                "--", sys.executable, "-c", "import time; time.sleep(10**6)"]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        start(0)
        if wait_until(lambda: holder(conn, name) == "c0", 60, 0.01) is None:
            raise RuntimeError("the first candidate never led")
        start(1)
        time.sleep(2 * retry + 2.0)  # the standby is up and waiting
        assert holder(conn, name) == "c0"
        t0 = time.monotonic()
        os.killpg(procs[0].pid, signal.SIGKILL)
        got = wait_until(lambda: holder(conn, name) == "c1", 4 * lease, 0.002)
        return time.monotonic() - t0 if got else None
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(10)
        conn.close()


# --- 4. a hung server --------------------------------------------------------------------


def hung_server(rounds: int, timeout: float = 0.5) -> dict[str, Any]:
    """How long a call takes to give up when the server stops answering (a TCP proxy that
    holds every byte): on an open connection (the watchdog) and on a new one (the connect)."""
    from benchmarks.tcpproxy import TcpProxy
    from celery_leader.lock import BackendUnavailable

    proxy = TcpProxy(5432)
    backend = PostgresBackend.from_url(f"postgresql://postgres@127.0.0.1:{proxy.port}/{DB_NAME}")
    lock = backend.lock("hung")
    open_conn: list[float] = []
    new_conn: list[float] = []
    try:
        for _ in range(rounds):
            lock.get(5.0)  # an open, pooled connection
            proxy.set_mode("blackhole")
            for out in (open_conn, new_conn):
                started = time.perf_counter()
                try:
                    lock.get(timeout)
                except BackendUnavailable:
                    out.append(time.perf_counter() - started)
                else:
                    raise RuntimeError("a call through a black hole answered")
            proxy.set_mode("reset")
            proxy.set_mode("pass")
    finally:
        backend.close()
        proxy.close()
    return {"timeout_s": timeout, "open_connection_s": summary(open_conn), "new_connection_s": summary(new_conn)}


# --- 5. batched renewals ---------------------------------------------------------------------


def batch_renewals(url: str, n: int, rounds: int) -> dict[str, Any]:
    """One by one against ``update_many`` over ``n`` lease rows (see benchmarks/_batch.py)."""
    backend = PostgresBackend.from_url(url)
    statements = [0]
    execute = psycopg.Cursor.execute

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        statements[0] += 1  # every statement of the backend: one round trip each (no pipeline here)
        return execute(self, *args, **kwargs)

    admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=DB_NAME, autocommit=True)
    pids: list[int] = []

    def server_cpu() -> float | None:
        if not pids:  # the backend's own sessions (its pool), found once it has connected
            cur = admin.cursor()
            execute(cur, "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'celery-leader'", [DB_NAME])
            pids.extend(row[0] for row in cur.fetchall())
        return _batch.process_cpu(pids)

    psycopg.Cursor.execute = counting  # type: ignore[method-assign]
    try:
        return _batch.measure(backend, n, rounds, lambda: statements[0], server_cpu)
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        admin.close()
        backend.close()


BATCH_TITLE = "## Batched renewals (issue 21)"


def batch_markdown(b: dict[str, Any]) -> str:
    one, bat = b["one_by_one"], b["batched"]
    return "\n".join([
        BATCH_TITLE,
        "",
        f"{b['n']:,} elections on one `PostgresBackend`, renewed {b['rounds']} rounds one by one (`PostgresLock.update`, "
        f"one statement each) and {b['rounds']} rounds in batches (`update_many`, {b['batch_size']} renewals per call as "
        "the asyncio scheduler sends them: one `UPDATE ... FROM unnest(...) RETURNING name` each), alternating (CPU and round trips: "
        f"means over the rounds; time per round: the median), at a load average of {b.get('loadavg_before', b['loadavg'])[0]:.1f} before and {b['loadavg'][0]:.1f} after ({b.get('when', '')}). Server CPU is the "
        "backend sessions' own (/proc); round trips are the statements the client sent.",
        "",
        _batch.markdown_table(b),
        "",
        f"Batched, a renewal costs **{b['client_cpu_ratio']:.2f}x** the client CPU and **{b['server_cpu_ratio']:.2f}x** "
        f"the server CPU of one by one, and {bat['round_trips']:.4f} round trips instead of {one['round_trips']:.2f}; "
        f"a round of {b['n']:,} renewals takes {bat['wall_ms']:.0f} ms instead of {one['wall_ms']:.0f} ms. Each row is "
        "still compared with its own version (a row that moved on is that item's Conflict); new terms and releases "
        "go one by one as before (they raise the fence and notify).",
    ]) + "\n"  # fmt: skip


# --- report ------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    r, h, d, c = data["renewal"], data["handover"], data.get("django_handover"), data["crash"]
    m = data["machine"]
    us = 1e6
    rows = [
        ["renewal: `PostgresLock.update` (own term, one statement)", r["renew"]["p50"] * us, r["renew"]["p99"] * us, r["renew"]["mean"] * us],
        ["raw conditional UPDATE, the same statement (psycopg 3, autocommit)", r["raw_update"]["p50"] * us, r["raw_update"]["p99"] * us, r["raw_update"]["mean"] * us],
        ["`get` (a follower's read: lease row joined with its fence)", r["get"]["p50"] * us, r["get"]["p99"] * us, r["get"]["mean"] * us],
    ]
    hand = [["postgresql://", h["handover_s"]["n"], h["handover_s"]["p50"] * 1e3, h["handover_s"]["p99"] * 1e3, h["handover_s"]["max"] * 1e3]]
    if d:
        hand.append(["django:// (same server)", d["handover_s"]["n"], d["handover_s"]["p50"] * 1e3, d["handover_s"]["p99"] * 1e3, d["handover_s"]["max"] * 1e3])
    crash = c["takeover_s"]
    hung = data.get("hung")
    lines = [
        "# postgresql:// backend benchmarks",
        "",
        f"Produced by `{data['command']}` on {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['when']}, "
        f"against the PostgreSQL {data['server_version']} on 127.0.0.1:5432 (a throwaway database), while other "
        "engineers' test suites shared the machine (load average "
        f"{data.get('loadavg_before', [float('nan')])[0]:.1f} before, {data.get('loadavg_after', [float('nan')])[0]:.1f} after): "
        "absolute numbers follow the load, ratios are more stable. "
        "Raw numbers: `benchmarks/results/postgresql.json`. Kept short (about two minutes) on the shared CPU.",
        "",
        "## Renewal against the raw conditional UPDATE",
        "",
        f"{r['renew']['n']} renewals interleaved with {r['raw_update']['n']} raw statements (after 100 warm-up rounds).",
        "",
        table(rows, ["", "p50 µs", "p99 µs", "mean µs"]),
        "",
        f"Ratio p50: **{r['ratio_p50']:.2f}** (target <= 1.3); ratio of means {r['ratio_mean']:.2f}. A renewal is "
        "the same single statement plus the record's JSON encoding, the pool checkout and the watchdog's arm/disarm; "
        "it sends no NOTIFY (only holder changes do), and `statement_timeout` is set only when the call's timeout "
        "changes by a whole second.",
        "",
        "## Graceful handover through LISTEN/NOTIFY",
        "",
        "Three candidates (lease 10 s, renew_deadline 6 s, retry_period 2 s); the leader's `stop()` releases "
        "(one conditional UPDATE, then NOTIFY), a follower's LISTEN connection wakes it, it reads and takes the "
        "lock (one short transaction raising the fence, then NOTIFY); the time runs from `stop()` to the new "
        "leader's `on_started_leading`. Without the notification a follower would wait for its next poll "
        "(up to 2.4 s).",
        "",
        table(hand, ["backend", "handovers", "p50 ms", "p99 ms", "max ms"]),
        "",
        "Target: p50 <= 20 ms.",
        "",
        "## Crash takeover",
        "",
        f"Two `celery-leader run` processes (lease {c['lease_s']:g} s, renew_deadline and retry_period in the "
        f"defaults' proportions: {c['settings']}); the holder's process group is SIGKILLed and the time runs "
        f"until the row names the other candidate. {crash['n']} runs"
        + (f", {c['timed_out']} without takeover" if c["timed_out"] else "")
        + ".",
        "",
        table([[crash["p50"], crash["max"], crash["p50"] / c["lease_s"], crash["max"] / c["lease_s"]]], ["p50 s", "max s", "p50 / lease", "max / lease"]),
        "",
        "Target: p50 <= 1.05 x the lease. Renewals send no notification, so a follower learns of the last "
        "renewal at its next read (every retry_period) and counts the lease from there: the takeover lands "
        "between (lease - retry_period) and (lease + 1.2 x retry_period) after the crash, one lease on average.",
    ]
    if hung:
        o, n = hung["open_connection_s"], hung["new_connection_s"]
        lines += [
            "",
            "## A hung server",
            "",
            f"`get({hung['timeout_s']:g})` through `benchmarks/tcpproxy.py` switched to black-hole (connections stay "
            f"open, nothing is forwarded), {o['n']} times each: first on the open pooled connection (the watchdog "
            "shuts its socket down at the deadline), then on a new one (the connect is abandoned at the deadline).",
            "",
            table(
                [["open connection", o["p50"], o["max"]], ["new connection", n["p50"], n["max"]]],
                ["call", "p50 s until BackendUnavailable", "max s"],
            ),
            "",
            "Target: the call's timeout + 0.5 s at most.",
        ]
    if data.get("batch"):
        lines += ["", batch_markdown(data["batch"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks postgresql")
    parser.add_argument("--n", type=int, default=2000, help="renewals (and raw statements) to time")
    parser.add_argument("--handovers", type=int, default=40)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--lease", type=float, default=6.0, help="lease of the crash runs (seconds)")
    parser.add_argument("--hung", type=int, default=20, help="calls into a hung server (each kind)")
    parser.add_argument("--skip-django", action="store_true")
    parser.add_argument("--batch-n", type=int, default=1000, help="elections of the batched-renewal part")
    parser.add_argument("--batch-rounds", type=int, default=10, help="rounds each way of the batched-renewal part")
    parser.add_argument("--only", choices=["all", "batch"], default="all", help="batch: only the batched-renewal part")
    args = parser.parse_args(argv)
    if args.only == "batch":
        return main_batch(args, argv)
    data: dict[str, Any] = {"command": ("python -m benchmarks postgresql " + " ".join(argv)).strip(), "loadavg_before": os.getloadavg()}
    with database() as url:
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres") as c:
            data["server_version"] = c.execute("SHOW server_version").fetchone()[0].split()[0]
        print("renewal...", flush=True)
        data["renewal"] = renewal(url, args.n)
        print("graceful handovers...", flush=True)
        data["handover"] = handovers(url, args.handovers)
        if not args.skip_django:
            print("graceful handovers on django://...", flush=True)
            data["django_handover"] = django_handovers(args.handovers)
        print("hung server...", flush=True)
        data["hung"] = hung_server(args.hung)
        print("batched renewals...", flush=True)
        data["batch"] = {**batch_renewals(url, args.batch_n, args.batch_rounds), "when": machine()["when"]}
        print("crash takeovers...", flush=True)
        values = [crash_takeover(url, args.lease) for _ in range(args.crashes)]
        print("  ", [round(v, 3) if v else None for v in values], flush=True)
        done = [v for v in values if v is not None]
        data["crash"] = {
            "lease_s": args.lease,
            "settings": f"{args.lease * 2 / 3:g} s / {args.lease * 2 / 15:g} s",
            "takeover_s": summary(done),
            "samples": values,
            "timed_out": len(values) - len(done),
        }
    data["loadavg_after"] = os.getloadavg()
    path = write_results(NAME, data)
    text = markdown({**data, "machine": machine()})
    print(text)
    (ROOT / "docs" / "bench-postgresql.md").write_text(text)
    print(f"results: {path}")
    return 0


def main_batch(args: argparse.Namespace, argv: list[str]) -> int:
    """Only the batched-renewal part, added to the existing results and document."""
    with database() as url:
        found = {**batch_renewals(url, args.batch_n, args.batch_rounds), "when": machine()["when"]}
    found["command"] = ("python -m benchmarks postgresql " + " ".join(argv)).strip()
    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["batch"] = found
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    text = batch_markdown(found)
    print(text)
    _batch.splice(ROOT / "docs" / "bench-postgresql.md", BATCH_TITLE, text)
    print(f"results: {path}")
    return 0
