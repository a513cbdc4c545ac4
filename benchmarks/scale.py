"""Scale: many elections in one process on one Redis backend object, and 50 candidates for one.

``python -m benchmarks scale [--quick] [--url redis://127.0.0.1:6379/0] [--sizes 1000,10000]
[--window 30] [--executor-threads 0,16] [--candidates 50] [--handovers 20]``

Writes ``benchmarks/results/scale.json`` and ``docs/bench-scale.md``.

* Many elections: ``N`` :class:`~celery_leader.aio.AsyncElection` objects with distinct
  names on ONE :class:`~celery_leader.backends.redis.RedisBackend` (one connection pool,
  one pub/sub connection), default timing (15 s / 10 s / 2 s), each leading its own name.
  Over a measurement window: CPU seconds of the process, RSS, backend round trips per
  second, and renew lateness. Lateness is measured from outside, through a wrapper
  :class:`~celery_leader.lock.Lock`: the core schedules a renewal ``retry_period`` after it
  sent the previous successful write, so the wrapper notes when each write was asked for
  (in the event loop) and when its blocking call actually started (in the executor
  thread); ``sent - (previous asked + retry_period)`` is how late the renewal went out.
  ``--executor-threads 0`` is asyncio's default thread pool (``min(32, cores + 4)``);
  other values install a bigger default executor, to show whether the pool is the limit.
* Contention: ``--candidates`` thread-driver :class:`~celery_leader.election.Election`
  objects for ONE name on one backend, short timing (1 s / 0.6 s / 0.2 s): time to the
  first leader from a cold start, then ``--handovers`` step-downs (time from
  ``step_down()`` to the next candidate's ``on_started_leading``), compare-and-swap
  conflicts per second, backend calls per second while idle (followers watch), and a
  sampler that checks ``is_leader`` of all candidates every ~2 ms (never more than one).

Every key lives under a unique prefix and is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import faulthandler
import gc
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from benchmarks._common import RESULTS, summary, table, write_results
from celery_leader.aio import AsyncElection
from celery_leader.backends.redis import RedisBackend, RedisLock
from celery_leader.election import Election
from celery_leader.lock import Backend, Capabilities, Conflict, Lock, RenewBatch, Versioned
from celery_leader.record import LeaderRecord

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench-scale.md"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: raw samples kept per case in the JSON (for plots), drawn at random when there are more
KEEP_SAMPLES = 4000


# --- measuring from outside: a wrapper lock ----------------------------------------------


class Stats:
    """Counters shared by every wrapped lock of one run. Thread-safe enough (GIL + lock)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.recording = False
        self.calls: Counter[str] = Counter()
        self.conflicts = 0
        self.errors: Counter[str] = Counter()
        self.loop_late: list[float] = []  # asked (loop) - scheduled
        self.sent_late: list[float] = []  # started in the thread - scheduled
        self.queue_wait: list[float] = []  # started in the thread - asked

    def reset(self) -> None:
        with self.guard:
            self.calls.clear()
            self.conflicts = 0
            self.errors.clear()
            self.loop_late.clear()
            self.sent_late.clear()
            self.queue_wait.clear()


class MeasuredLock(Lock):
    """Delegates to a real lock; records call counts, conflicts and renewal timing.

    The async methods mirror :class:`Lock`'s defaults (``asyncio.to_thread`` of the blocking
    call) so that the engine sees exactly what it sees with the bare Redis lock, plus two
    timestamps per call.
    """

    #: the drivers read capabilities from the class; the Redis lock's (watch included)
    capabilities = RedisLock.capabilities

    def __init__(self, inner: Lock, stats: Stats, retry_period: float) -> None:
        self.inner, self.stats, self.retry_period = inner, stats, retry_period
        self.name = inner.name
        #: when the last successful acquire/renew was asked for (the core's ``sent_at``)
        self._last_write_asked: float | None = None

    # blocking calls (thread driver, and inside the executor for the async driver)
    def _timed(self, kind: str, fn: Any, *args: Any) -> Any:
        stats = self.stats
        try:
            result = fn(*args)
        except Conflict:
            if stats.recording:
                with stats.guard:
                    stats.calls[kind] += 1
                    stats.conflicts += 1
            raise
        except Exception as exc:
            if stats.recording:
                with stats.guard:
                    stats.calls[kind] += 1
                    stats.errors[type(exc).__name__] += 1
            raise
        if stats.recording:
            with stats.guard:
                stats.calls[kind] += 1
        return result

    def get(self, timeout: float) -> Versioned | None:
        return self._timed("get", self.inner.get, timeout)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._timed("create", self.inner.create, record, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        return self._timed("update", self.inner.update, record, expected_version, timeout)

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        self.inner.wait_for_change(version, timeout)

    def close(self) -> None:
        self.inner.close()

    # the async driver's calls
    async def aget(self, timeout: float) -> Versioned | None:
        self._last_write_asked = None
        return await asyncio.to_thread(self.get, timeout)

    async def acreate(self, record: LeaderRecord, timeout: float) -> str:
        asked = time.monotonic()
        version = await asyncio.to_thread(self.create, record, timeout)
        self._last_write_asked = asked
        return version

    async def aupdate(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        asked = time.monotonic()
        previous, self._last_write_asked = self._last_write_asked, None
        renewal = bool(record.holder) and previous is not None

        def timed_update() -> str:
            started = time.monotonic()
            if renewal and self.stats.recording:
                assert previous is not None
                scheduled = previous + self.retry_period
                with self.stats.guard:
                    self.stats.loop_late.append(asked - scheduled)
                    self.stats.sent_late.append(started - scheduled)
                    self.stats.queue_wait.append(started - asked)
            return self.update(record, expected_version, timeout)

        version = await asyncio.to_thread(timed_update)
        if record.holder:
            self._last_write_asked = asked
        return version


class MeasuredBackend(Backend):
    """Hands out :class:`MeasuredLock` around the real backend's locks (same connections)."""

    capabilities = Capabilities(linearizable=True, watch=True, partition_safe=True)

    def __init__(self, inner: Backend, stats: Stats, retry_period: float, batch: bool = False) -> None:
        self.inner, self.stats, self.retry_period = inner, stats, retry_period
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.batch = MeasuredBatch(inner, stats) if batch and isinstance(inner, RenewBatch) else None

    @classmethod
    def from_url(cls, url: str) -> "MeasuredBackend":  # pragma: no cover - not used
        raise NotImplementedError

    def lock(self, name: str) -> Lock:
        if self.batch is not None:
            return MeasuredBatchLock(self.inner.lock(name), self.stats, self.retry_period, self.batch)
        return MeasuredLock(self.inner.lock(name), self.stats, self.retry_period)

    def close(self) -> None:
        self.inner.close()


class MeasuredBatch(RenewBatch):
    """The real backend's ``update_many`` around unwrapped locks, with the same timing figures.

    The renewal's schedule is read from its election's core (set by the benchmark on each
    lock): ``next_renew`` is when the core wanted it, ``_inflight.sent_at`` when it asked.
    Reading them from the executor thread is a benchmark's liberty (floats, one renewal in
    flight per election), never something the library does.
    """

    def __init__(self, inner: RenewBatch, stats: Stats) -> None:
        self.inner, self.stats = inner, stats

    def update_many(self, items: Any, timeout: float) -> list[str | Exception]:
        started = time.monotonic()
        stats = self.stats
        if stats.recording:
            with stats.guard:
                for lock, _, _ in items:
                    core = lock.election._core
                    flight = core._inflight
                    if flight is not None and flight.kind == "renew":
                        scheduled = core.next_renew
                        stats.loop_late.append(flight.sent_at - scheduled)
                        stats.sent_late.append(started - scheduled)
                        stats.queue_wait.append(started - flight.sent_at)
        out = self.inner.update_many([(lock.inner, record, version) for lock, record, version in items], timeout)
        if stats.recording:
            with stats.guard:
                stats.calls["batch"] += 1
                stats.calls["renewal (in a batch)"] += len(items)
                for outcome in out:
                    if isinstance(outcome, Conflict):
                        stats.conflicts += 1
                    elif isinstance(outcome, Exception):
                        stats.errors[type(outcome).__name__] += 1
        return out


class MeasuredBatchLock(MeasuredLock):
    """A :class:`MeasuredLock` that keeps the driver's own paths: blocking calls in its pool,
    renewals through :class:`MeasuredBatch` (``capabilities.batch``)."""

    capabilities = Capabilities(linearizable=True, watch=True, partition_safe=True, batch=True)
    # the Lock defaults: the driver then calls get/create/update in its own pool
    aget = Lock.aget  # type: ignore[assignment]
    acreate = Lock.acreate  # type: ignore[assignment]
    aupdate = Lock.aupdate  # type: ignore[assignment]

    def __init__(self, inner: Lock, stats: Stats, retry_period: float, batch: MeasuredBatch) -> None:
        super().__init__(inner, stats, retry_period)
        self.batch = batch
        self.election: Any = None

    def renew_batch(self) -> RenewBatch:
        return self.batch


class FullCollections:
    """Counts CPython's full (generation 2) garbage collections and their CPU time while on."""

    def __init__(self) -> None:
        self.on = False
        self.count = 0
        self.cpu_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on or info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.count += 1
            self.cpu_s += time.thread_time() - self._started


class LogCounter(logging.Handler):
    """Counts the library's log records by level and first words, instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = "other"
        for key in ("renew failed", "stopped leading", "started leading", "released", "read failed", "acquire failed"):
            if key in message:
                kind = key
                break
        self.counts[f"{record.levelname.lower()}: {kind}"] += 1

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


LOGS = LogCounter()


def _quiet_library_logs() -> None:
    library = logging.getLogger("celery_leader")
    if LOGS not in library.handlers:
        library.addHandler(LOGS)
    library.setLevel(logging.INFO)
    library.propagate = False


# --- process figures -----------------------------------------------------------------------


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB, from /proc."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cleanup(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


def _keep(values: list[float]) -> list[float]:
    if len(values) <= KEEP_SAMPLES:
        return [round(v, 6) for v in values]
    return [round(v, 6) for v in random.Random(0).sample(values, KEEP_SAMPLES)]


# --- what one compare-and-swap costs through each path ---------------------------------------


def call_cost(url: str, seconds: float) -> list[dict[str, Any]]:
    """Renewal-shaped writes per second and CPU per write: the three ways to drive them.

    * ``sync``: :meth:`RedisLock.update` in a loop in one thread (what the thread driver does);
    * ``to_thread``: 64 asyncio tasks, each ``await asyncio.to_thread(lock.update, ...)``, which
      is what :meth:`Lock.aupdate` does by default and what the asyncio driver uses with Redis;
    * ``redis.asyncio``: the same Lua script through redis-py's native asyncio client, 64 tasks
      (an upper bound for a native async Redis lock; not part of the library).
    """
    from celery_leader.backends import redis as redis_backend
    from celery_leader.record import encode_record

    prefix = f"bench-cost-{uuid.uuid4().hex[:8]}:"
    real = RedisBackend.from_url(f"{url}?prefix={prefix}&max_connections=16")
    out: list[dict[str, Any]] = []
    tasks = 64

    def rec(i: int) -> LeaderRecord:
        return LeaderRecord(holder="cost", lease_duration=15, transitions=1, renew_time=float(i))

    # sync
    lock = real.lock("sync")
    version = lock.create(rec(0), 5.0)
    n, c0, t0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        version = lock.update(rec(n), version, 5.0)
        n += 1
    elapsed, cpu = time.monotonic() - t0, time.process_time() - c0
    out.append(
        {"path": "sync RedisLock.update, 1 thread", "writes_per_s": n / elapsed, "cpu_us_per_write": 1e6 * cpu / n}
    )

    async def via_threads() -> dict[str, Any]:
        locks = [real.lock(f"t{i}") for i in range(tasks)]
        versions = [lk.create(rec(0), 5.0) for lk in locks]
        count = 0
        stop_at = time.monotonic() + seconds

        async def one(i: int) -> None:
            nonlocal count
            while time.monotonic() < stop_at:
                versions[i] = await asyncio.to_thread(locks[i].update, rec(count), versions[i], 5.0)
                count += 1

        c1, t1 = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        el, cp = time.monotonic() - t1, time.process_time() - c1
        return {
            "path": f"asyncio.to_thread(RedisLock.update), {tasks} tasks, default pool",
            "writes_per_s": count / el,
            "cpu_us_per_write": 1e6 * cp / count,
        }

    out.append(asyncio.run(via_threads()))

    async def native() -> dict[str, Any]:
        import redis.asyncio as aredis

        pool = aredis.BlockingConnectionPool.from_url(url, max_connections=16, timeout=5)
        client = aredis.Redis(connection_pool=pool)
        pool_client = client
        sha = await pool_client.script_load(redis_backend.WRITE_SCRIPT)
        channel = prefix + "changes"
        keys = [(f"{prefix}lock:n{i}", f"{prefix}fence:n{i}") for i in range(tasks)]
        versions = [""] * tasks
        count = 0
        stop_at = time.monotonic() + seconds

        async def write(i: int, n: int) -> None:
            raw = encode_record(rec(n))
            status, value = await pool_client.evalsha(
                sha, 2, keys[i][0], keys[i][1], versions[i], raw, 1, 60000, channel, f"n{i}"
            )
            if status != 1:
                raise RuntimeError(f"unexpected conflict: {value!r}")
            versions[i] = value.decode() if isinstance(value, bytes) else value

        async def one(i: int) -> None:
            nonlocal count
            while time.monotonic() < stop_at:
                await write(i, count)
                count += 1

        for i in range(tasks):
            await write(i, 0)
        c1, t1 = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        el, cp = time.monotonic() - t1, time.process_time() - c1
        await client.aclose()
        await pool.aclose()
        return {
            "path": f"redis.asyncio EVALSHA of the same script, {tasks} tasks (reference)",
            "writes_per_s": count / el,
            "cpu_us_per_write": 1e6 * cp / count,
        }

    out.append(asyncio.run(native()))
    real.close()
    cleanup(url, prefix)
    return out


# --- many elections, asyncio driver ------------------------------------------------------------


async def _many(
    url: str,
    n: int,
    window: float,
    executor_threads: int,
    retry: float = 2.0,
    prefix: str = "",
    partial: Path | None = None,
    batch: bool = True,
    gc_freeze: bool = False,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    executor = None
    if executor_threads:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=executor_threads, thread_name_prefix="bench")
        loop.set_default_executor(executor)
    pool_threads = executor_threads or min(32, (os.cpu_count() or 1) + 4)
    prefix = prefix or f"bench-scale-{uuid.uuid4().hex[:8]}:"
    # one backend object; its connection cap follows the thread pool so it is not the limit
    max_conn = max(16, pool_threads)
    real = RedisBackend.from_url(f"{url}?prefix={prefix}&max_connections={max_conn}")
    real.check()
    stats = Stats()
    lease, renew = 15.0, 10.0
    backend = MeasuredBackend(real, stats, retry, batch=batch)
    lost = Counter[str]()

    def stopped() -> None:
        lost["terms_ended"] += 1

    LOGS.take()
    load_before = os.getloadavg()[0]
    rss0, _ = rss_kib()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    elections = [
        AsyncElection(
            f"job-{i:05d}",
            backend=backend,
            identity=f"bench-{i}",
            lease_duration=lease,
            renew_deadline=renew,
            retry_period=retry,
            on_stopped_leading=stopped,
        )
        for i in range(n)
    ]
    for e in elections:
        if isinstance(e.lock, MeasuredBatchLock):
            e.lock.election = e  # MeasuredBatch reads each renewal's schedule from its core
        await e.start()
    # every election leads its own name; wait for all (bounded)
    settle_limit = 60.0 + n / 100
    while sum(e.is_leader for e in elections) < n and time.monotonic() - t0 < settle_limit:
        await asyncio.sleep(0.1)
    all_leading_s = time.monotonic() - t0
    leading_at_start = sum(e.is_leader for e in elections)
    cpu_startup = time.process_time() - cpu0
    if gc_freeze:
        # what AsyncElection's docstring and docs/design.md recommend for thousands of elections: once they are running,
        # move everything alive to the permanent generation, out of every later collection
        gc.collect()
        gc.freeze()
    # let the first, bunched renewals spread out before measuring
    await asyncio.sleep(retry)
    stats.reset()
    stats.recording = True
    rss1, _ = rss_kib()
    full_gc = FullCollections()
    gc.callbacks.append(full_gc)
    full_gc.on = True
    cpu1, w0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu_window = time.process_time() - cpu1
    elapsed = time.monotonic() - w0
    full_gc.on = False
    gc.callbacks.remove(full_gc)
    stats.recording = False
    leading_at_end = sum(e.is_leader for e in elections)
    terms_ended = lost["terms_ended"]  # before stop(), which ends every term
    load_after = os.getloadavg()[0]
    logs = LOGS.take()
    rss2, hwm = rss_kib()
    with stats.guard:
        calls = dict(stats.calls)
        conflicts, errors = stats.conflicts, dict(stats.errors)
        loop_late, sent_late, queue_wait = list(stats.loop_late), list(stats.sent_late), list(stats.queue_wait)
    renewals_batched = calls.get("renewal (in a batch)", 0)
    total_calls = sum(calls.values()) - renewals_batched  # round trips: a batch is one
    result: dict[str, Any] = {
        "elections": n,
        "batched": batch,
        "gc_freeze": gc_freeze,
        "gc_frozen_objects": gc.get_freeze_count(),
        "renewals_per_s": (renewals_batched + calls.get("update", 0)) / elapsed,
        "batch_size_mean": renewals_batched / calls["batch"] if calls.get("batch") else None,
        "loadavg_1min": [load_before, load_after],
        "executor_threads": pool_threads,
        "executor": "default" if not executor_threads else "custom",
        "max_connections": max_conn,
        "timing": [lease, renew, retry],
        "all_leading_s": all_leading_s,
        "leading_at_start": leading_at_start,
        "leading_at_end": leading_at_end,
        "terms_ended": terms_ended,
        "log_records_until_stop": logs,
        "cpu_startup_s": cpu_startup,
        "window_s": elapsed,
        "cpu_s": cpu_window,
        "cpu_pct": 100.0 * cpu_window / elapsed,
        "full_gc_count": full_gc.count,
        "full_gc_cpu_s": full_gc.cpu_s,
        "rss_before_kib": rss0,
        "rss_kib": rss2,
        "rss_hwm_kib": hwm,
        "rss_per_election_kib": (rss1 - rss0) / n,
        "calls": calls,
        "round_trips_per_s": total_calls / elapsed,
        "cpu_us_per_round_trip": 1e6 * cpu_window / total_calls if total_calls else float("nan"),
        "needed_per_s": n / retry,
        "conflicts": conflicts,
        "errors": errors,
        "renew_late_s": summary(sent_late),
        "loop_late_s": summary(loop_late),
        "queue_wait_s": summary(queue_wait),
        "renew_late_samples_s": _keep(sent_late),
        "stopped": False,
    }
    if partial is not None:
        # the measurement is done: keep it even if stopping hangs
        partial.write_text(json.dumps(result))
    s0 = time.monotonic()
    outcomes = await asyncio.gather(*(e.stop() for e in elections), return_exceptions=True)
    stop_timeouts = sum(isinstance(o, (asyncio.TimeoutError, TimeoutError)) for o in outcomes)
    stop_s = time.monotonic() - s0
    # AsyncElection.stop() gives up waiting after renew_deadline + op_timeout + 1 s (raising
    # TimeoutError); let the remaining releases finish before deleting the keys
    tasks = [e._task for e in elections if e._task is not None and not e._task.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    released_s = time.monotonic() - s0
    real.close()
    deleted = cleanup(url, prefix)
    if executor is not None:
        executor.shutdown(wait=False)
    result.update(
        stopped=True,
        stop_s=stop_s,
        stop_timeouts=stop_timeouts,
        all_released_s=released_s,
        keys_deleted=deleted,
    )
    return result


def many(
    url: str,
    n: int,
    window: float,
    executor_threads: int,
    retry: float = 2.0,
    prefix: str = "",
    partial: Path | None = None,
    batch: bool = True,
    gc_freeze: bool = False,
) -> dict[str, Any]:
    return asyncio.run(_many(url, n, window, executor_threads, retry, prefix, partial, batch, gc_freeze))


def many_in_child(
    url: str,
    n: int,
    window: float,
    executor_threads: int,
    retry: float = 2.0,
    batch: bool = True,
    gc_freeze: bool = False,
) -> dict[str, Any]:
    """Run one case in a fresh interpreter, so that its RSS and CPU are its own.

    If the child does not finish (stopping 10,000 overloaded elections can hang), its
    measurement is still used, its thread stacks are kept for diagnosis, and its keys deleted.
    """
    prefix = f"bench-scale-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out = Path(tmp) / "case.json"
        stacks = Path(tmp) / "stacks.txt"
        argv = [sys.executable, "-m", "benchmarks", "scale", "--one-case", str(n), str(executor_threads), str(window), str(out),
                str(retry), "1" if batch else "0", "--url", url, "--prefix", prefix,
                "--gc-freeze", "1" if gc_freeze else "0"]  # fmt: skip
        limit = 120.0 + retry + window + n / 50  # starting and stopping 10,000 take minutes on a loaded machine
        env = dict(os.environ, BENCH_SCALE_STACKS=str(stacks), BENCH_SCALE_STACKS_AFTER=str(limit - 10))
        finished, outcome = True, "ok"
        try:
            subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent, check=True, timeout=limit, env=env)
        except subprocess.TimeoutExpired:
            finished, outcome = False, f"hung: killed after {limit:.0f} s"
        except subprocess.CalledProcessError as exc:
            code = exc.returncode
            finished = False
            outcome = f"died: signal {-code}" if code < 0 else f"died: exit code {code}"
        if not finished:
            print(f"  the case did not finish cleanly ({outcome})", flush=True)
        if not finished:
            time.sleep(1.0)  # let the server finish what the dead child had sent
        if not out.exists():
            # died before its measurement window ended: record that, delete its keys, go on
            return {
                "elections": n,
                "batched": batch,
                "gc_freeze": gc_freeze,
                "timing": [15.0, 10.0, retry],
                "executor_threads": executor_threads or min(32, (os.cpu_count() or 1) + 4),
                "executor": "default" if not executor_threads else "custom",
                "finished": False,
                "outcome": outcome,
                "measured": False,
                "keys_deleted": cleanup(url, prefix) + cleanup(url, prefix),
            }
        result = json.loads(out.read_text())
        result["outcome"] = outcome
        if not finished:
            result["finished"] = False
            result["keys_deleted"] = cleanup(url, prefix) + cleanup(url, prefix)
            if stacks.exists() and stacks.stat().st_size:
                keep = Path(tempfile.gettempdir()) / f"bench-scale-stacks-{n}-{executor_threads}-{retry:g}.txt"
                keep.write_text(stacks.read_text())
                result["stacks_file"] = str(keep)
                print(f"  thread stacks of the stuck child: {keep}", flush=True)
        return result


# --- followers in the same process: the executor is shared --------------------------------------


async def _followers(url: str, followers: int, window: float) -> dict[str, Any]:
    """One leader and ``followers`` standbys of the same name, all ``AsyncElection`` in one loop.

    On a ``watch`` backend a standby waits in ``Lock.await_for_change``, which by default
    runs the blocking ``wait_for_change`` in the loop's default executor for the whole wait:
    the leader's renewal then queues behind the standbys' waits.
    """
    retry = 2.0
    prefix = f"bench-follow-{uuid.uuid4().hex[:8]}:"
    real = RedisBackend.from_url(f"{url}?prefix={prefix}")
    stats = Stats()
    backend = MeasuredBackend(real, stats, retry)
    ended: list[float] = []
    leader = AsyncElection("shared", backend=backend, identity="leader", on_stopped_leading=lambda: ended.append(1.0))
    await leader.start()
    if not await leader.wait_until_leader(20):
        raise RuntimeError("the leader did not lead")
    standbys = [AsyncElection("shared", backend=backend, identity=f"standby-{i}") for i in range(followers)]
    for e in standbys:
        await e.start()
    await asyncio.sleep(2 * retry)
    stats.reset()
    stats.recording = True
    await asyncio.sleep(window)
    stats.recording = False
    with stats.guard:
        late, queue = list(stats.sent_late), list(stats.queue_wait)
        calls = dict(stats.calls)
    result = {
        "followers": followers,
        "executor_threads": min(32, (os.cpu_count() or 1) + 4),
        "timing": [15.0, 10.0, retry],
        "window_s": window,
        "leader_renewals": len(late),
        "renew_late_s": summary(late),
        "queue_wait_s": summary(queue),
        "leader_terms_lost": len(ended),
        "still_leading": leader.is_leader,
        "calls_per_s": {k: v / window for k, v in calls.items()},
    }
    await asyncio.gather(*(e.stop() for e in standbys), return_exceptions=True)
    await leader.stop()
    real.close()
    cleanup(url, prefix)
    return result


def followers_case(url: str, followers: int, window: float) -> dict[str, Any]:
    return asyncio.run(_followers(url, followers, window))


# --- 50 candidates, one election, thread driver -------------------------------------------


def contention(url: str, candidates: int, handovers: int, idle: float) -> dict[str, Any]:
    lease, renew, retry = 1.0, 0.6, 0.2
    prefix = f"bench-contend-{uuid.uuid4().hex[:8]}:"
    real = RedisBackend.from_url(f"{url}?prefix={prefix}&max_connections=64")
    real.check()
    stats = Stats()
    backend = MeasuredBackend(real, stats, retry)
    cond = threading.Condition()
    terms: list[dict[str, Any]] = []  # {"who", "token", "start", "end"}
    current: dict[str, Any] = {}

    def make(i: int) -> Election:
        who = f"cand-{i:02d}"

        def started(lead: Any) -> None:
            with cond:
                term = {"who": who, "token": lead.token, "start": time.monotonic(), "end": None}
                terms.append(term)
                current["term"] = term
                cond.notify_all()

        def stopped() -> None:
            now = time.monotonic()
            with cond:
                for term in reversed(terms):
                    if term["who"] == who and term["end"] is None:
                        term["end"] = now
                        break
                cond.notify_all()

        return Election(
            "contended",
            backend=backend,
            identity=who,
            lease_duration=lease,
            renew_deadline=renew,
            retry_period=retry,
            on_started_leading=started,
            on_stopped_leading=stopped,
        )

    elections = [make(i) for i in range(candidates)]
    by_name = {e.identity: e for e in elections}
    # the sampler: how many candidates believe they lead, every ~2 ms
    sampling = threading.Event()
    counts: Counter[int] = Counter()

    def sample() -> None:
        while not sampling.is_set():
            counts[sum(1 for e in elections if e.is_leader)] += 1
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    stats.recording = True
    LOGS.take()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    starters = [threading.Thread(target=e.start) for e in elections]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    start_spread = time.monotonic() - t0
    sampler.start()
    with cond:
        cond.wait_for(lambda: terms, timeout=30)
    first_leader_s = time.monotonic() - t0 if terms else float("nan")
    cold_conflicts = stats.conflicts
    # idle: one leader renewing, the others watching
    time.sleep(0.5)
    stats.reset()
    i0, c0 = time.monotonic(), time.process_time()
    time.sleep(idle)
    idle_s, idle_cpu = time.monotonic() - i0, time.process_time() - c0
    with stats.guard:
        idle_calls, idle_conflicts = dict(stats.calls), stats.conflicts
    # handovers by step-down
    stats.reset()
    h0 = time.monotonic()
    handover_s: list[float] = []
    conflicts_per: list[int] = []
    missed = 0
    for _ in range(handovers):
        with cond:
            term = current.get("term")
        if term is None:
            break
        before = stats.conflicts
        s = time.monotonic()
        by_name[term["who"]].step_down()
        with cond:
            ok = cond.wait_for(lambda old=term: current.get("term") is not old, timeout=10)
            new = current.get("term")
        if not ok or new is None:
            missed += 1
            continue
        handover_s.append(new["start"] - s)
        time.sleep(0.3)  # let the losers settle before the next round
        conflicts_per.append(stats.conflicts - before)
    handover_phase_s = time.monotonic() - h0
    with stats.guard:
        handover_calls, handover_conflicts = dict(stats.calls), stats.conflicts
    cpu_total = time.process_time() - cpu0
    logs = LOGS.take()
    sampling.set()
    sampler.join()
    stoppers = [threading.Thread(target=e.stop) for e in elections]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    real.close()
    deleted = cleanup(url, prefix)
    # safety from the callbacks: no two terms overlap, tokens only go up
    ordered = sorted(terms, key=lambda t: t["start"])
    overlaps = 0
    for a, b in zip(ordered, ordered[1:]):
        if a["end"] is None or a["end"] > b["start"]:
            overlaps += 1
    tokens = [t["token"] for t in ordered]
    regressions = sum(1 for a, b in zip(tokens, tokens[1:]) if b <= a)
    samples = sum(counts.values())
    return {
        "candidates": candidates,
        "timing": [lease, renew, retry],
        "first_leader_s": first_leader_s,
        "cold_start_conflicts": cold_conflicts,
        "start_spread_s": start_spread,
        "idle_s": idle_s,
        "idle_calls_per_s": {k: v / idle_s for k, v in idle_calls.items()},
        "idle_round_trips_per_s": sum(idle_calls.values()) / idle_s,
        "idle_conflicts": idle_conflicts,
        "idle_cpu_pct": 100.0 * idle_cpu / idle_s,
        "handovers": len(handover_s),
        "handovers_missed": missed,
        "handover_s": summary(handover_s),
        "handover_samples_s": [round(v, 6) for v in handover_s],
        "conflicts_per_handover": summary([float(c) for c in conflicts_per]),
        "handover_phase_s": handover_phase_s,
        "handover_conflicts_per_s": handover_conflicts / handover_phase_s,
        "handover_round_trips_per_s": sum(handover_calls.values()) / handover_phase_s,
        "cpu_pct": 100.0 * cpu_total / (time.monotonic() - t0),
        "terms": len(terms),
        "log_records_until_stop": logs,
        "overlaps": overlaps,
        "token_regressions": regressions,
        "leader_count_samples": {str(k): v for k, v in sorted(counts.items())},
        "max_simultaneous_leaders": max(counts) if counts else 0,
        "share_exactly_one": counts.get(1, 0) / samples if samples else float("nan"),
        "keys_deleted": deleted,
    }


# --- report --------------------------------------------------------------------------------


def _ms(v: float) -> float:
    return v * 1000.0


def _commands(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The command line that produced each part (one line when all came from one run)."""
    commands = data.get("commands") or {}
    distinct = sorted(set(commands.values()))
    if len(distinct) <= 1:
        return [("", distinct[0] if distinct else data.get("command", "python -m benchmarks scale"))]
    return [(part, cmd) for part, cmd in sorted(commands.items())]


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"] if "machine" in data else {}
    lines = [
        "# Benchmark: scale (many elections in one process; many candidates for one)",
        "",
        "Commands: " + ", ".join(f"`{c}`" + (f" ({k})" if k else "") for k, c in _commands(data)) + "  ",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}, "
        f"Redis {data.get('redis_version', '?')} on 127.0.0.1 (shared with other work on the machine); "
        f"run {m.get('when', '?')}.",
        "",
        "## Many elections, one process, one Redis backend object (asyncio driver)",
        "",
        "Each election leads its own name with the default timing (lease 15 s, renew deadline 10 s, "
        "retry period 2 s) unless the timing column says otherwise, so every election renews every "
        "retry period: `N / retry_period` compare-and-swap round trips per second are needed. Measured over a window after all were leading. "
        "*Renew lateness* = when the renewal's Redis call started minus when the engine scheduled "
        "it (the core's `next_renew`: previous successful write + 0.9-1.0 x retry period; the "
        "asyncio driver's renewal scheduler sends a renewal up to 50 ms before that, so "
        "lateness can be negative); *queue wait* is the part spent waiting "
        "for a thread of the executor. CPU is the whole process (all threads); *full GCs* are "
        "CPython's generation-2 collections in the window (each walks every tracked object "
        "of the process) and the CPU they took, part of the CPU column.",
        "",
    ]
    cost = data.get("call_cost")
    if cost:
        lines += [
            "### What one renewal-shaped write costs, by path",
            "",
            "The same compare-and-swap Lua script, for as long as the run lasts; CPU is the whole process.",
            "",
            table(
                [[r["path"], round(r["writes_per_s"]), round(r["cpu_us_per_write"])] for r in cost],
                ["path", "writes/s", "CPU us / write"],
            ),
            "",
            "### N elections",
            "",
        ]
    rows = []
    for r in data.get("many", []):
        if r.get("measured") is False:
            rows.append(
                [r["elections"], "/".join(f"{x:g}" for x in r["timing"]), _mode(r)]
                + ["-"] * 17
                + [f"no: {r.get('outcome', '?')}"]
            )
            continue
        rows.append(
            [
                r["elections"],
                "/".join(f"{x:g}" for x in r["timing"]),
                _mode(r),
                round(r["all_leading_s"], 2),
                f"{r['leading_at_end']}/{r['elections']}",
                r["terms_ended"],
                round(r["cpu_pct"], 1),
                f"{r['full_gc_count']} / {r['full_gc_cpu_s']:.2f}" if "full_gc_count" in r else "-",
                round(r["rss_kib"] / 1024, 1),
                round(r["rss_per_election_kib"], 2),
                round(r["round_trips_per_s"], 0),
                round(r.get("renewals_per_s", float("nan")), 0),
                round(r["needed_per_s"], 0),
                round(r["cpu_us_per_round_trip"]),
                round(_ms(r["renew_late_s"]["p50"]), 2),
                round(_ms(r["renew_late_s"]["p99"]), 2),
                round(_ms(r["renew_late_s"]["max"]), 2),
                round(_ms(r["queue_wait_s"]["p99"]), 2),
                sum(r["errors"].values()),
                "/".join(f"{x:.1f}" for x in r.get("loadavg_1min", [])),
                "yes" if r.get("finished", True) else f"no: {r.get('outcome', '?')}",
            ]
        )
    lines.append(
        table(
            rows,
            [
                "elections",
                "lease/renew/retry s",
                "renewals",
                "all leading after s",
                "leading at end",
                "terms lost",
                "CPU %",
                "full GCs / their CPU s",
                "RSS MiB",
                "KiB / election",
                "round trips/s",
                "renewals/s",
                "needed/s",
                "CPU us / round trip",
                "late p50 ms",
                "late p99 ms",
                "late max ms",
                "queue wait p99 ms",
                "errors",
                "load avg (1 min) before/after",
                "stopped cleanly",
            ],
        )
    )
    fol = data.get("followers")
    if fol:
        lines += [
            "",
            "## One leader and its standbys in one process (asyncio driver)",
            "",
            "One `AsyncElection` leads a name, N more of the same name stand by, all in one event loop "
            f"on one Redis backend object (default timing 15 s / 10 s / 2 s). A standby waits for a change "
            "in `Lock.await_for_change`, which by default runs the blocking `wait_for_change` in the "
            f"loop's default executor ({fol[0]['executor_threads']} threads here) for the whole wait; "
            "the leader's renewal queues behind those waits.",
            "",
            table(
                [
                    [
                        f["followers"],
                        f["leader_renewals"],
                        round(_ms(f["renew_late_s"]["p50"]), 1),
                        round(_ms(f["renew_late_s"]["max"]), 1),
                        round(_ms(f["queue_wait_s"]["max"]), 1),
                        f["leader_terms_lost"],
                    ]
                    for f in fol
                ],
                [
                    "standbys in the process",
                    "leader renewals",
                    "renewal late p50 ms",
                    "late max ms",
                    "executor queue wait max ms",
                    "leader terms lost",
                ],
            ),
        ]
    c = data.get("contention")
    if c:
        lines += [
            "",
            f"## {c['candidates']} candidates for one election (thread driver, one backend object)",
            "",
            "Timing 1 s / 0.6 s / 0.2 s. Cold start: all candidates started at once on an empty key. "
            "Handover: the leader calls `step_down()`; time until another candidate's "
            "`on_started_leading`. A sampler read `is_leader` of every candidate every ~2 ms.",
            "",
            table(
                [
                    ["time to first leader (cold start)", f"{_ms(c['first_leader_s']):.1f} ms"],
                    [
                        "conflicts in the cold start",
                        f"{c['cold_start_conflicts']} (start() of all candidates took {_ms(c.get('start_spread_s', 0)):.0f} ms)",
                    ],
                    [
                        f"handover p50 / p99 / max (n={c['handovers']})",
                        f"{_ms(c['handover_s']['p50']):.1f} / {_ms(c['handover_s']['p99']):.1f} / "
                        f"{_ms(c['handover_s']['max']):.1f} ms",
                    ],
                    [
                        "conflicts per handover p50 / max",
                        f"{c['conflicts_per_handover']['p50']:.0f} / {c['conflicts_per_handover']['max']:.0f}",
                    ],
                    ["conflicts/s during the handover phase", f"{c['handover_conflicts_per_s']:.1f}"],
                    ["round trips/s during the handover phase", f"{c['handover_round_trips_per_s']:.0f}"],
                    ["round trips/s while idle (1 leader, others watching)", f"{c['idle_round_trips_per_s']:.0f}"],
                    ["process CPU % while idle", f"{c['idle_cpu_pct']:.1f}"],
                    [
                        "terms / overlaps / token regressions",
                        f"{c['terms']} / {c['overlaps']} / {c['token_regressions']}",
                    ],
                    ["max candidates leading at once (sampler)", c["max_simultaneous_leaders"]],
                    ["samples with exactly one leader", f"{100 * c['share_exactly_one']:.2f} %"],
                ],
                ["measure", "value"],
            ),
        ]
    return "\n".join(lines)


def _mode(r: dict[str, Any]) -> str:
    freeze = ", gc.freeze()" if r.get("gc_freeze") else ""
    if r.get("batched"):
        size = r.get("batch_size_mean")
        return "batched" + (f" (mean {size:.1f} per call)" if size else "") + freeze
    return "one by one" + freeze


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="Redis URL (127.0.0.1 only; keys under a unique prefix)")
    parser.add_argument("--quick", action="store_true", help="small run: 100 and 1,000 elections, short windows")
    parser.add_argument("--sizes", default=None, help="comma-separated election counts (default 1000,3000,10000)")
    parser.add_argument("--window", type=float, default=None, help="measurement window, seconds (default 30)")
    parser.add_argument(
        "--executor-threads",
        default="0",
        help="loop default executors to try at the largest size: 0 = asyncio's default (default 0); "
        "the driver's own calls use its own pool",
    )
    parser.add_argument(
        "--unbatched",
        default="1000",
        help="sizes also run with renewals one by one (the backend's batch capability unused; default 1000)",
    )
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--handovers", type=int, default=None, help="step-downs in the contention case (default 20)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results or docs")
    parser.add_argument(
        "--slow-retry",
        type=float,
        default=0.0,
        help="also run the largest size unbatched with this retry_period (lease 15 s, renew 10 s); 0 = skip (default)",
    )
    parser.add_argument(
        "--one-case", nargs=6, metavar=("N", "THREADS", "WINDOW", "OUT", "RETRY", "BATCH"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--parts",
        default=",".join(sorted(PARTS)),
        help="which parts to run (cost, many, followers, contention); a partial run keeps the other "
        "parts of benchmarks/results/scale.json",
    )
    parser.add_argument("--followers", default="0,12,60", help="standby counts for the followers part")
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--gc-freeze",
        default="0",
        help="batched cases of the largest size: 0 = as is, 1 = gc.freeze() once all lead (docs/design.md), "
        "0,1 = both (default 0)",
    )
    args = parser.parse_args(argv)
    if args.one_case:
        _quiet_library_logs()
        n, threads, win, out, retry, batched = args.one_case
        stacks = os.environ.get("BENCH_SCALE_STACKS")
        if stacks:
            handle = open(stacks, "w")  # noqa: SIM115 - open until the process ends
            faulthandler.dump_traceback_later(float(os.environ.get("BENCH_SCALE_STACKS_AFTER", "300")), file=handle)
        freeze = args.gc_freeze.strip() == "1"
        result = many(args.url, int(n), float(win), int(threads), float(retry), args.prefix, Path(out), batched == "1", freeze)
        Path(out).write_text(json.dumps(result))
        return 0
    sizes = [int(s) for s in (args.sizes or ("100,1000" if args.quick else "1000,3000,10000")).split(",")]
    window = args.window if args.window is not None else (6.0 if args.quick else 30.0)
    pools = [int(s) for s in args.executor_threads.split(",")]
    handovers = args.handovers if args.handovers is not None else (5 if args.quick else 20)
    candidates = min(args.candidates, 10) if args.quick else args.candidates

    _quiet_library_logs()
    client = redis.Redis.from_url(args.url)
    redis_version = client.info("server").get("redis_version", "?")
    client.close()

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - PARTS
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {sorted(PARTS)}")
    command = ("python -m benchmarks scale " + " ".join(a for a in argv if a != "--no-write")).strip()
    data: dict[str, Any] = {}
    if parts != PARTS and not args.no_write and (RESULTS / "scale.json").exists():
        # a partial run: keep the other parts of the last full run
        data = {k: v for k, v in json.loads((RESULTS / "scale.json").read_text()).items() if k != "machine"}
    data.setdefault("commands", {})
    data["redis_version"] = redis_version
    if "cost" in parts:
        _run_cost(args, data, command)
    if "many" in parts:
        _run_many(args, data, command, sizes, window, pools)
    if "followers" in parts:
        counts = [int(x) for x in args.followers.split(",")]
        out = []
        for f in counts:
            print(f"followers: 1 leader + {f} standbys in one process ...", flush=True)
            r = followers_case(args.url, f, 8.0 if args.quick else 20.0)
            print(
                f"  renewals late p50 {_ms(r['renew_late_s']['p50']):.0f} ms, max {_ms(r['renew_late_s']['max']):.0f} ms; "
                f"terms lost {r['leader_terms_lost']}",
                flush=True,
            )
            out.append(r)
        data["followers"] = out
        data["commands"]["followers"] = command
    if "contention" in parts:
        print(f"contention: {candidates} candidates ...", flush=True)
        c = contention(args.url, candidates, handovers, idle=3.0 if args.quick else 10.0)
        print(
            f"  first leader {_ms(c['first_leader_s']):.0f} ms; handover p50 {_ms(c['handover_s']['p50']):.0f} ms; "
            f"overlaps {c['overlaps']}; max leaders at once {c['max_simultaneous_leaders']}",
            flush=True,
        )
        data["contention"] = c
        data["commands"]["contention"] = command
    data["command"] = command
    return _write(args, data)


PARTS = {"cost", "many", "followers", "contention"}


def _run_cost(args: argparse.Namespace, data: dict[str, Any], command: str) -> None:
    print("per-call cost ...", flush=True)
    cost = call_cost(args.url, 2.0 if args.quick else 5.0)
    data["call_cost"] = cost
    data["commands"]["cost"] = command
    for row in cost:
        print(
            f"  {row['path']}: {row['writes_per_s']:.0f} writes/s, {row['cpu_us_per_write']:.0f} us CPU/write",
            flush=True,
        )


def _run_many(
    args: argparse.Namespace, data: dict[str, Any], command: str, sizes: list[int], window: float, pools: list[int]
) -> None:
    results: list[dict[str, Any]] = []
    unbatched = {int(x) for x in args.unbatched.split(",") if x.strip()}
    freezes = [x.strip() == "1" for x in args.gc_freeze.split(",") if x.strip()] or [False]
    cases = [
        (n, threads, 2.0, True, freeze)
        for n in sizes
        for threads in (pools if n == max(sizes) else pools[:1])
        for freeze in (freezes if n == max(sizes) else freezes[:1])
    ]
    cases += [(n, pools[0], 2.0, False, False) for n in sizes if n in unbatched]
    if args.slow_retry and not args.quick:
        cases.append((max(sizes), pools[0], args.slow_retry, False, False))
    for n, threads, retry, batch, freeze in cases:
        print(
            f"many: {n} elections, {'batched' if batch else 'one by one'}, "
            f"thread pool {'default' if not threads else threads}, retry {retry} s"
            f"{', gc.freeze()' if freeze else ''} ...",
            flush=True,
        )
        r = many_in_child(args.url, n, window, threads, retry, batch, freeze)
        results.append(r)
        if r.get("measured") is False:
            continue
        print(
            f"  all leading {r['all_leading_s']:.1f} s; leading at end {r['leading_at_end']}/{n}; "
            f"CPU {r['cpu_pct']:.1f} %; RSS {r['rss_kib'] / 1024:.0f} MiB; {r['round_trips_per_s']:.0f} rt/s "
            f"(needed {r['needed_per_s']:.0f}); late p99 {_ms(r['renew_late_s']['p99']):.1f} ms; "
            f"errors {r['errors']}; terms lost {r['terms_ended']}; logs {r['log_records_until_stop']}",
            flush=True,
        )
    data["many"] = results
    data["commands"]["many"] = command


def _write(args: argparse.Namespace, data: dict[str, Any]) -> int:
    from benchmarks._common import machine

    data_with_machine = {"machine": machine(), **data}
    text = markdown(data_with_machine)
    print(text)
    if not args.no_write:
        path = write_results("scale", data)
        print(f"wrote {path}")
        if not args.quick:
            DOCS.parent.mkdir(exist_ok=True)
            existing = DOCS.read_text() if DOCS.exists() else ""
            marker = "<!-- notes -->"
            notes = existing.split(marker, 1)[1] if marker in existing else "\n"
            DOCS.write_text(text.rstrip() + "\n\n" + marker + notes)
            print(f"wrote {DOCS}")
    return 0
