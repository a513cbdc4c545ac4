"""Recovery of many elections after Redis froze past their terms: do they all lead again?

``python -m benchmarks scale_stall [--elections 10000] [--freeze 12] [--watch 120]``

Starts a private ``redis-server`` on a free 127.0.0.1 port, N ``AsyncElection`` objects with
default timing (15 s / 10 s / 2 s) on one backend object, each leading its own name; then
freezes Redis (SIGSTOP) for ``--freeze`` seconds (longer than ``renew_deadline``: every
term ends) and resumes it. Prints, every 5 s, how many lead and the process's CPU, until
all lead again for three samples or ``--watch`` seconds pass. Prints only (docs/bench-scale.md
quotes it, "Issue 21: 10,000 elections").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import socket
import subprocess
import time

from celery_leader.aio import AsyncElection
from celery_leader.backends.redis import RedisBackend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(port: int, server: subprocess.Popen[bytes], n: int, freeze: float, watch: float) -> int:
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0")
    ended = [0]

    def stopped() -> None:
        ended[0] += 1

    elections = [
        AsyncElection(f"job-{i:05d}", backend=backend, identity=f"me-{i}", on_stopped_leading=stopped) for i in range(n)
    ]
    t0 = time.monotonic()
    for e in elections:
        await e.start()
    while sum(e.is_leader for e in elections) < n:
        await asyncio.sleep(0.2)
    print(f"all {n} leading after {time.monotonic() - t0:.1f} s", flush=True)
    await asyncio.sleep(4.0)
    server.send_signal(signal.SIGSTOP)
    print(f"Redis frozen for {freeze:g} s", flush=True)
    try:
        await asyncio.sleep(freeze)
    finally:
        server.send_signal(signal.SIGCONT)
    back = time.monotonic()
    print(f"Redis back: {sum(e.is_leader for e in elections)} leading, {ended[0]} terms ended", flush=True)
    cpu, full = time.process_time(), 0
    recovered = -1.0
    while time.monotonic() - back < watch:
        await asyncio.sleep(5.0)
        leading = sum(e.is_leader for e in elections)
        now_cpu = time.process_time()
        print(f"  +{time.monotonic() - back:.0f} s: {leading}/{n} leading, CPU {100 * (now_cpu - cpu) / 5:.0f} %", flush=True)
        cpu = now_cpu
        full = full + 1 if leading == n else 0
        if full == 1:
            recovered = time.monotonic() - back
        if full >= 3:
            break
    print(f"recovered: within {recovered:.0f} s" if full >= 3 else "recovered: no", flush=True)
    await asyncio.gather(*(e.stop() for e in elections), return_exceptions=True)
    backend.close()
    return 0 if full >= 3 else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale_stall", description=__doc__.split("\n")[0])
    parser.add_argument("--elections", type=int, default=10000)
    parser.add_argument("--freeze", type=float, default=12.0, help="seconds Redis stays frozen (default 12)")
    parser.add_argument("--watch", type=float, default=120.0, help="seconds to wait for recovery (default 120)")
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("needs redis-server on PATH")
        return 2
    logging.getLogger("celery_leader").setLevel(logging.ERROR)
    port = _free_port()
    argv_server = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(argv_server, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return asyncio.run(_run(port, server, args.elections, args.freeze, args.watch))
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(10)
