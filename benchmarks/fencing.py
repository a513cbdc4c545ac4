"""Fenced writes: the frozen-leader timeline, and what a fenced write costs.

``python -m benchmarks fencing [--rounds N] [--no-timeline] [--no-overhead]`` (a part not
re-run keeps its last results)

1. **Timeline** (real processes, the Redis at 127.0.0.1:6379): a leader
   (``tests/fencing/frozen_leader.py``, lease 1 s) writes to a plain Redis key and to a
   fenced one, is frozen with SIGSTOP, a new leader is elected here and writes both, the
   old one is resumed and finishes its write with its old token. Times come from
   ``time.monotonic()`` in both processes (one clock per host). Drawn to
   ``docs/img/fencing-timeline.png``.
2. **Overhead**: the latency of a fenced write beside the plain write it replaces, on each
   store (Redis ``SET``; SQL ``UPDATE`` of one row by key; S3 ``PutObject`` on moto in
   this process), ``--rounds`` writes each, same token (the common case: one term
   writing again).

Results: ``benchmarks/results/fencing.json``, ``docs/bench-fencing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, machine, summary, table, to_ms, write_results

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img" / "fencing-timeline.png"
DOC = ROOT / "docs" / "bench-fencing.md"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIA_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


# --- 1. the timeline ---------------------------------------------------------------------


def timeline() -> dict[str, Any]:
    """Run the frozen-leader story once; every event on the host's monotonic clock."""
    from celery_leader import Election
    from tests.fencing.stores import open_store

    tag = uuid.uuid4().hex[:8]
    specs = [{"kind": "redis-plain", "url": REDIS_URL, "key": f"fence-bench:{tag}:plain"},
             {"kind": "redis-set", "url": REDIS_URL, "key": f"fence-bench:{tag}:fenced"}]
    name = f"fence-bench-{tag}"
    trigger = Path(tempfile.mkdtemp(prefix="fence-bench-")) / "resume"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "tests.fencing.frozen_leader", name, REDIS_URL, str(trigger),
                             json.dumps(specs)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list[dict] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            lines.append(doc)
            ready.set()

    threading.Thread(target=read, daemon=True).start()

    def wait_for(key: str, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for doc in lines:
                if key in doc:
                    return doc
            ready.wait(0.05)
            ready.clear()
        raise RuntimeError(f"the frozen leader never printed {key!r}")

    ev: dict[str, Any] = {}
    stores = [open_store(spec) for spec in specs]
    election = Election(name, url=REDIS_URL, lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    try:
        ev["a_wrote"] = wait_for("wrote")["t"]
        time.sleep(0.4)  # a few renewals, for the picture
        ev["stop"] = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.05)
        beats = [doc for doc in lines if "deadline" in doc]
        ev["a_deadline"] = beats[-1]["deadline"]
        election.start()
        if not election.wait_until_leader(30):
            raise RuntimeError("no new leader")
        ev["b_leads"] = time.monotonic()
        ev["b_token"] = election.token
        time.sleep(0.15)
        for store in stores:
            store.write(election.token, "new leader")
        ev["b_wrote"] = time.monotonic()
        time.sleep(0.5)
        trigger.touch()
        ev["cont"] = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        wait_for("done")
        ev["a_token"] = wait_for("started")["token"]
        ev["a_started"] = wait_for("started")["started"]
        ev["a_resumed"] = wait_for("resumed")["resumed"]
        ev["a_lost"] = next((doc["lost"] for doc in lines if "lost" in doc), None)
        ev["late"] = {doc["store"]: {"outcome": doc["outcome"], "t": doc["t"]} for doc in lines if "store" in doc}
        ev["final"] = {store.kind: store.read() for store in stores}
        ev["end"] = time.monotonic()
    finally:
        election.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        for store in stores:
            store.client.delete(store.key, store.key + ":fence")
            store.close()
    return ev


def draw(ev: dict[str, Any], out: Path = IMG) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = ev["a_started"]

    def x(t: float) -> float:
        return t - t0

    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    rows = {"leader A": 3, "leader B": 2, "plain SET\n(lease only)": 1, "fenced SET\n(token)": 0}
    ax.set_yticks(list(rows.values()), list(rows))
    a, b = ev["a_token"], ev["b_token"]
    # A: leading, frozen, resumed
    ax.barh(3, x(ev["stop"]) - x(ev["a_started"]), left=x(ev["a_started"]), color="#4c72b0", height=0.5)
    ax.barh(3, ev["cont"] - ev["stop"], left=x(ev["stop"]), color="#dddddd", hatch="//", height=0.5,
            edgecolor="#999999")
    late_t = max(v["t"] for v in ev["late"].values())
    ax.barh(3, max(late_t - ev["cont"], 0.03), left=x(ev["cont"]), color="#c44e52", height=0.5)
    ax.text(x(ev["a_started"]) + 0.02, 3.33, f"A leads, token {a}", fontsize=8)
    ax.text(x(ev["stop"]) + 0.05, 2.98, "SIGSTOP: frozen (GC pause, VM pause, partition)", fontsize=8, va="center")
    lost = f"; its election notices {1000 * (ev['a_lost'] - ev['cont']):.0f} ms later" if ev.get("a_lost") else ""
    ax.text(x(ev["cont"]) + 0.05, 3.0, f"SIGCONT: A finishes the write\nit had started{lost}", fontsize=8,
            color="#c44e52", va="center")
    # B
    ax.barh(2, x(ev["end"]) - x(ev["b_leads"]), left=x(ev["b_leads"]), color="#55a868", height=0.5)
    ax.text(x(ev["b_leads"]) + 0.02, 2.33, f"B leads, token {b}", fontsize=8)
    # A's lease deadline
    ax.axvline(x(ev["a_deadline"]), color="#444444", linestyle="--", linewidth=1)
    ax.text(x(ev["a_deadline"]) + 0.02, -0.62, "A's lease deadline", fontsize=8, color="#444444")
    # writes
    for row in (1, 0):
        ax.plot(x(ev["a_wrote"]), row, "o", color="#4c72b0")
        ax.plot(x(ev["b_wrote"]), row, "o", color="#55a868")
    plain, fenced = ev["late"]["redis-plain"], ev["late"]["redis-set"]
    ax.plot(x(plain["t"]), 1, "X", color="#c44e52", markersize=11)
    ax.annotate(f"A's late write (token {a}) lands:\nB's value is lost", (x(plain["t"]), 1), (12, -4),
                textcoords="offset points", fontsize=8, color="#c44e52", va="center")
    ax.plot(x(fenced["t"]), 0, "s", color="#55a868", markersize=9, markerfacecolor="white")
    ax.annotate(f"A's late write refused:\n{a} < {b} (StaleTokenError)", (x(fenced["t"]), 0), (12, -4),
                textcoords="offset points", fontsize=8, color="#2d6a3e", va="center")
    ax.text(x(ev["a_wrote"]), 0.28, f"A writes ({a})", fontsize=7, ha="left")
    ax.text(x(ev["b_wrote"]), 0.28, f"B writes ({b})", fontsize=7, ha="center")
    ax.set_xlim(-0.1, x(ev["end"]) + 1.0)
    ax.set_ylim(-0.8, 3.75)
    ax.set_xlabel("seconds (measured: real processes, Redis, lease 1 s)")
    ax.set_title("A frozen leader resumes after its lease: only the token stops its write", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


# --- 2. overhead -------------------------------------------------------------------------


def _time(fn: Any, rounds: int) -> list[float]:
    fn()  # warm-up: connections, script load
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def overhead(rounds: int) -> list[dict[str, Any]]:
    import redis
    import sqlalchemy as sa

    from celery_leader.fencing import redis as fr
    from celery_leader.fencing.s3 import fenced_put
    from celery_leader.fencing.sql import fence_column, fenced_write

    rows: list[dict[str, Any]] = []
    client = redis.Redis.from_url(REDIS_URL)
    key = f"fence-bench:{uuid.uuid4().hex[:8]}"
    try:
        rows.append({"store": "Redis", "plain": "SET", "plain_ms": summary(to_ms(_time(lambda: client.set(key, "v"),
                                                                                       rounds))),
                     "fenced": "fenced_set (EVALSHA)",
                     "fenced_ms": summary(to_ms(_time(lambda: fr.fenced_set(client, key, 7, "v"), rounds)))})
    finally:
        client.delete(key, key + ":fence")
        client.close()
    tmp = tempfile.mkdtemp(prefix="fence-bench-")
    for label, url in (("SQLite (file)", f"sqlite:///{tmp}/bench.db"), ("PostgreSQL 15", PG_URL),
                       ("MariaDB 10.11", MARIA_URL)):
        engine = sa.create_engine(url)
        meta = sa.MetaData()
        table_ = sa.Table(f"fence_bench_{uuid.uuid4().hex[:8]}", meta, sa.Column("name", sa.String(64),
                          primary_key=True), sa.Column("body", sa.Text), fence_column())
        meta.create_all(engine)
        try:
            with engine.begin() as conn:
                fenced_write(conn, table_, {"name": "k"}, {"body": "v"}, 7)

            def plain(engine=engine, table_=table_) -> None:
                with engine.begin() as conn:
                    conn.execute(table_.update().where(table_.c.name == "k").values(body="v"))

            def fenced(engine=engine, table_=table_) -> None:
                with engine.begin() as conn:
                    fenced_write(conn, table_, {"name": "k"}, {"body": "v"}, 7)

            rows.append({"store": label, "plain": "UPDATE by key (own transaction)",
                         "plain_ms": summary(to_ms(_time(plain, rounds))), "fenced": "fenced_write",
                         "fenced_ms": summary(to_ms(_time(fenced, rounds)))})
        finally:
            meta.drop_all(engine)
            engine.dispose()
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="t", aws_secret_access_key="t",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="fence-bench")
        counter = iter(range(10**9))
        s3_rounds = max(10, rounds // 4)
        rows.append({"store": "S3 (moto 5.2, in process)", "plain": "PutObject",
                     "plain_ms": summary(to_ms(_time(lambda: s3.put_object(Bucket="fence-bench", Key="k",
                                                                           Body=str(next(counter)).encode()),
                                                     s3_rounds))),
                     "fenced": "fenced_put (HEAD + conditional PUT)",
                     "fenced_ms": summary(to_ms(_time(lambda: fenced_put(s3, "fence-bench", "f",
                                                                         str(next(counter)).encode(), 7),
                                                      s3_rounds)))})
    finally:
        server.stop()
    return rows


# --- report ------------------------------------------------------------------------------


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    out = ["# Fenced writes: the frozen leader, and the cost of a fenced write", "",
           f"`python -m benchmarks fencing` (about half a minute). {m['cores']} cores shared with other test suites, "
           f"Python {m['python']}, {m['when']}. Servers on 127.0.0.1: the shared Redis, PostgreSQL and MariaDB; "
           "moto in the benchmark's own process. Why and how: [fencing.md](fencing.md).", ""]
    ev = data.get("timeline")
    if ev:
        t0 = ev["a_started"]
        out += ["## The frozen leader", "", "![timeline](img/fencing-timeline.png)", "",
                "| event | s after A's term started |", "|---|---|"]
        for label, key in ((f"A writes both keys (token {ev['a_token']})", "a_wrote"), ("A frozen (SIGSTOP)", "stop"),
                           ("A's lease deadline (its last renewal + lease)", "a_deadline"),
                           (f"B leads (token {ev['b_token']})", "b_leads"), ("B writes both keys", "b_wrote"),
                           ("A resumed (SIGCONT)", "cont"), ("A's election notices the term is over", "a_lost")):
            if ev.get(key) is not None:
                out.append(f"| {label} | {ev[key] - t0:.3f} |")
        for kind, late in ev["late"].items():
            out.append(f"| A's late write to `{kind}`: {late['outcome']} | {late['t'] - t0:.3f} |")
        out += ["", f"Final values: plain key `{ev['final']['redis-plain']}`, fenced key "
                f"`{ev['final']['redis-set']}`. The resumed leader wrote "
                f"{(min(v['t'] for v in ev['late'].values()) - ev['cont']) * 1000:.1f} ms after SIGCONT, "
                "finishing the write it had started before it was frozen (work cannot check its lease "
                "between every instruction, and its election only learns the term is over once it runs again): "
                "no lease can prevent that write; the token does.", ""]
    rows = data.get("overhead")
    if rows:
        out += ["## What a fenced write costs", "",
                f"{data['rounds']} writes each (S3: a quarter of that), one row/key, the same token every time; "
                "milliseconds.", "",
                table([[r["store"], r["plain"], r["plain_ms"]["p50"], r["plain_ms"]["p99"], r["fenced"],
                        r["fenced_ms"]["p50"], r["fenced_ms"]["p99"]] for r in rows],
                      ["store", "plain write", "p50", "p99", "fenced write", "p50", "p99"]), "",
                "Redis: one EVALSHA instead of one SET (the check runs inside the server). SQL: one statement "
                "on SQLite and PostgreSQL; three on MariaDB (`SET @v`, the upsert, `SELECT @v`). S3: a HEAD "
                "before the conditional PUT.", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fencing", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--no-timeline", action="store_true")
    parser.add_argument("--no-overhead", action="store_true")
    args = parser.parse_args(argv)
    data: dict[str, Any] = {}
    previous = RESULTS / "fencing.json"
    if previous.exists():  # a part not re-run keeps its last results
        data = {k: v for k, v in json.loads(previous.read_text()).items() if k in ("timeline", "overhead", "rounds")}
    data["machine"] = machine()
    if not args.no_overhead:
        data["rounds"] = args.rounds
    if not args.no_timeline:
        data["timeline"] = timeline()
        print("drew", draw(data["timeline"]))
    if not args.no_overhead:
        data["overhead"] = overhead(args.rounds)
    write_results("fencing", {k: v for k, v in data.items() if k != "machine"})
    DOC.write_text(render(data))
    print(render(data))
    return 0
