"""Measurements shared by the coordination-service benchmarks (etcd, ZooKeeper).

* :func:`renew_vs_raw`: ``Lock.update`` with the last version, and the engine's own
  renewals, against the backend's raw compare-and-swap sent by hand, at the engine's cadence.
* :func:`graceful_handovers`: library level, from the leader's ``stop()`` (which releases)
  to ``on_started_leading`` of a standby that was waiting in its watch.
* :func:`crash_takeovers`: candidates in child processes; SIGKILL the leader; from the
  ``renewTime`` of its last write (read from the lock after the kill) to the start of the
  next term, over the lease. Only a lease can pass: that is the safety rule.
* :func:`measure` runs the three on one cluster, :func:`report` tables them for the docs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import HANDOVER_SETTINGS, RenewTimes, handover_seconds, summary, table, to_ms
from celery_leader import Election
from celery_leader.lock import Lock
from celery_leader.record import LeaderRecord
from celery_leader.registry import open_backend

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def renew_vs_raw(url: str, raw_cas: Callable[[], None], samples: int, pace: float = 0.01) -> dict[str, Any]:
    """Interleave ``raw_cas()``, ``Lock.update`` and ``Lock.get``, one every ``pace`` seconds;
    then the engine renewing every 10 ms on its own."""
    backend = open_backend(url)
    lock: Lock = backend.lock("bench-renew")
    record = LeaderRecord(holder="bench", lease_duration=LEASE, acquire_time=time.time(), renew_time=time.time(), transitions=1)
    got = lock.get(5.0)
    version = lock.update(record, got.version, 5.0) if got else lock.create(record, 5.0)
    for _ in range(20):  # warm connections
        raw_cas()
        version = lock.update(record, version, 5.0)
    raw_t: list[float] = []
    lib_t: list[float] = []
    get_t: list[float] = []
    for n in range(samples):
        order = ("raw", "lib") if n % 2 == 0 else ("lib", "raw")
        for kind in order:
            t0 = time.perf_counter()
            if kind == "raw":
                raw_cas()
                raw_t.append(time.perf_counter() - t0)
            else:
                version = lock.update(record, version, 5.0)
                lib_t.append(time.perf_counter() - t0)
            time.sleep(pace)
        if n % 5 == 0:
            t0 = time.perf_counter()
            lock.get(5.0)
            get_t.append(time.perf_counter() - t0)
            time.sleep(pace)
    times = RenewTimes()
    e = Election("bench-engine", backend=backend, identity="renewer", lease_duration=1.0, renew_deadline=0.6,
                 retry_period=pace, observer=times)  # fmt: skip
    with e:
        e.wait_until_leader(20)
        deadline = time.monotonic() + 120
        while len(times.samples) < samples and time.monotonic() < deadline:
            time.sleep(0.05)
    backend.close()
    raw_s, lib_s, engine_s = summary(to_ms(raw_t)), summary(to_ms(lib_t)), summary(to_ms(times.samples[:samples]))
    return {
        "raw_cas_ms": raw_s,
        "lock_update_ms": lib_s,
        "engine_renew_ms": engine_s,
        "get_ms": summary(to_ms(get_t)),
        "update_over_raw_p50": lib_s["p50"] / raw_s["p50"],
        "engine_over_raw_p50": engine_s["p50"] / raw_s["p50"],
        "pace_s": pace,
    }


def graceful_handovers(url: str, rounds: int) -> dict[str, Any]:
    """``stop()`` of the leader (a release) to ``on_started_leading`` of a watching standby."""
    return {"handover_ms": summary(to_ms(handover_seconds(url, rounds))), "settings": HANDOVER_SETTINGS}


_CANDIDATE = r"""
import json, sys, threading, time
from celery_leader import Election
url, name, ident, lease, renew, retry = sys.argv[1:7]
said = threading.Lock()
def say(obj):
    # one whole line per write, under a lock: print() writes text and newline apart, and
    # the leader callback's thread and this one could share a line
    with said:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
def start(lead):
    say({"start": time.time(), "identity": ident, "token": lead.token})
e = Election(name, url=url, identity=ident, lease_duration=float(lease), renew_deadline=float(renew),
             retry_period=float(retry), on_started_leading=start)
e.start()
say({"ready": ident})
while True:
    time.sleep(3600)
"""


class _Candidate:
    def __init__(self, url: str, name: str, ident: str) -> None:
        self.ident = ident
        self.starts: list[float] = []
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CANDIDATE, url, name, ident, str(LEASE), str(RENEW), str(RETRY)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "start" in doc:
                self.starts.append(float(doc["start"]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def crash_takeovers(url: str, rounds: int) -> dict[str, Any]:
    """SIGKILL the leading child process; the next term's start minus the last ``renewTime``."""
    name = f"bench-crash-{os.getpid()}-{int(time.time())}"
    backend = open_backend(url)
    lock = backend.lock(name)
    counter = iter(range(10**6))
    nodes = [_Candidate(url, name, f"c{next(counter)}") for _ in range(3)]
    ratios: list[float] = []
    try:
        for _ in range(rounds):
            deadline = time.monotonic() + 30
            holder = None
            while time.monotonic() < deadline:
                got = lock.get(5.0)
                holder = got.record.holder if got else None
                if holder and any(n.ident == holder for n in nodes):
                    break
                time.sleep(0.05)
            leader = next(n for n in nodes if n.ident == holder)
            time.sleep(0.5)  # a few renewals, standbys watching
            leader.kill()
            got = lock.get(5.0)
            assert got is not None
            if got.record.holder != leader.ident:
                raise RuntimeError("the lock moved before the leader was killed")
            last_renew = got.record.renew_time
            nodes.remove(leader)
            before = {n.ident: len(n.starts) for n in nodes}
            deadline = time.monotonic() + 30
            new_start = None
            while new_start is None and time.monotonic() < deadline:
                for n in nodes:
                    if len(n.starts) > before[n.ident]:
                        new_start = n.starts[-1]
                time.sleep(0.005)
            if new_start is None:
                raise RuntimeError("no takeover after the crash")
            ratios.append((new_start - last_renew) / LEASE)
            nodes.append(_Candidate(url, name, f"c{next(counter)}"))
    finally:
        for n in nodes:
            n.kill()
        backend.close()
    return {
        "crash_takeover_over_lease": summary(ratios),
        "settings": f"lease {LEASE} s, renew deadline {RENEW} s, retry period {RETRY} s; 3 candidate processes",
    }


def measure(label: str, url: str, raw_cas: Callable[[], None], args: Any, renew_url: str | None = None) -> dict[str, Any]:
    """All three measurements on one cluster (``args``: ``samples``, ``handovers``, ``crashes``);
    renewals on ``renew_url`` if given (the member ``raw_cas`` talks to)."""
    print(f"{label}: renewals ...", flush=True)
    data = renew_vs_raw(renew_url or url, raw_cas, args.samples)
    print(f"{label}: graceful handovers ...", flush=True)
    data.update(graceful_handovers(url, args.handovers))
    print(f"{label}: crash takeovers ...", flush=True)
    data.update(crash_takeovers(url, args.crashes))
    return data


def report(clusters: dict[str, dict[str, Any]], service: str, raw_what: str) -> str:
    """The Markdown table of :func:`measure`'s results, one block of rows per cluster label."""
    rows: list[tuple[Any, ...]] = []
    for label, d in clusters.items():
        for what, key in ((raw_what, "raw_cas_ms"), ("renew: Lock.update (ms)", "lock_update_ms"),
                          ("renew: the engine's own (ms)", "engine_renew_ms"), ("get (ms)", "get_ms"),
                          ("graceful handover, library (ms)", "handover_ms"),
                          ("crash takeover / lease", "crash_takeover_over_lease")):  # fmt: skip
            s = d[key]
            rows.append((label, what, s["n"], s["p50"], s["p99"], s["max"]))
        rows.append((label, "Lock.update / raw (p50 ratio)", "", d["update_over_raw_p50"], "", ""))
        rows.append((label, "engine renew / raw (p50 ratio)", "", d["engine_over_raw_p50"], "", ""))
    return table(rows, [service, "measure", "n", "p50", "p99", "max"])
