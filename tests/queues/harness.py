"""Real scheduler/consumer processes of a task queue, and what their workers recorded.

Every queue test app writes one JSON line per executed periodic task (from the worker
side): ``{"slot": ..., "token": ..., "pid": ..., "t": ...}``. Duplicates are counted per
slot from those lines, never from the scheduler's own logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from celery_leader import open_backend
from tests.servers import stop_process, unavailable

REDIS = os.environ.get("CELERY_LEADER_TEST_REDIS", "redis://127.0.0.1:6379/0")
#: short leases for the process tests (seconds)
TIMING = ("--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2")


def need_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Redis at {REDIS} is not reachable ({exc})")


def holder(name: str, url: str = REDIS) -> str:
    backend = open_backend(url)
    try:
        got = backend.lock(name).get(2.0)
        return got.record.holder if got else ""
    finally:
        backend.close()


def record(name: str, url: str = REDIS):  # noqa: ANN201
    backend = open_backend(url)
    try:
        got = backend.lock(name).get(2.0)
        return got.record if got else None
    finally:
        backend.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Fleet:
    """Processes ``c0``, ``c1``... made by ``argv(ident, identity)``; identities ``c0.0``, ``c0.1``..."""

    def __init__(self, tmp: Path, name: str, argv: Callable[[str, str], Sequence[str]], env: dict[str, str]) -> None:
        self.tmp, self.name, self.argv = tmp, name, argv
        self.env = {**os.environ, **env, "PYTHONPATH": _pythonpath()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.generation: dict[str, int] = {}

    def spawn(self, ident: str) -> subprocess.Popen:
        gen = self.generation[ident] = self.generation.get(ident, -1) + 1
        out = open(self.tmp / f"{ident}.{gen}.out", "wb")
        proc = subprocess.Popen(list(self.argv(ident, f"{ident}.{gen}")), env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)  # fmt: skip
        out.close()
        self.procs[ident] = proc
        return proc

    def start(self, n: int = 3) -> Fleet:
        for i in range(n):
            self.spawn(f"c{i}")
        return self

    def signal(self, ident: str, sig: int) -> None:
        """Signal the process and its descendants (a paused consumer is paused whole)."""
        proc = self.procs[ident]
        for pid in [proc.pid, *_children(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def leader(self, exclude: Sequence[str] = (), timeout: float = 20.0) -> str:
        """The process (``c1``) whose identity holds the lock, other than ``exclude``."""

        def current() -> str | None:
            h = holder(self.name)
            ident = h.split(".", 1)[0] if h else ""
            return ident if ident in self.procs and ident not in exclude else None

        return str(wait_for(current, timeout, f"a leader of {self.name} other than {list(exclude)}"))

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.out")))

    def stop(self) -> None:
        for ident, proc in self.procs.items():
            if proc.poll() is None:
                self.signal(ident, signal.SIGCONT)
            stop_process(proc)
            for pid in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found.extend(kids)
                todo.extend(kids)
    return found


def _pythonpath() -> str:
    here = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def runs(log: Path) -> list[dict]:
    out = []
    if log.exists():
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def duplicates(records: list[dict]) -> dict[str, int]:
    """Slots executed more than once (worker side)."""
    return {slot: n for slot, n in Counter(r["slot"] for r in records).items() if n > 1}


def wait_runs(log: Path, more: int, timeout: float = 20.0) -> list[dict]:
    """Wait until ``more`` new slots were executed after now."""
    start = len(runs(log))
    wait_for(lambda: len(runs(log)) >= start + more, timeout, f"{more} more periodic runs in {log}")
    return runs(log)


def assert_tokens_follow_slots(records: list[dict]) -> None:
    """A later slot never carries an older term's token (no stale leader enqueued late)."""
    ordered = sorted(records, key=lambda r: r["slot"])
    for a, b in zip(ordered, ordered[1:]):
        assert b["token"] >= a["token"], f"slot {b['slot']} token {b['token']} after slot {a['slot']} token {a['token']}"


def kill_stop_term(fleet: Fleet, log: Path, *, runs_while_paused: int = 2, after_wake: Callable[[], None] = lambda: None) -> None:
    """The failover every queue test puts its running fleet through, then stops it.

    SIGKILL the leader (a crash: its lease runs out), SIGSTOP the next one for longer than
    the lease and SIGCONT it (the old leader wakes up: it must not send; ``after_wake``
    checks more), SIGTERM the third (graceful: released on the way out, exit 0): the one
    that was paused is the only candidate left. Waits for a run in ``log`` after each takeover
    (the pause and the wake-up phases wait longer: that is where a stale leader would send).
    """
    try:
        first = fleet.leader()
        wait_runs(log, 1)

        fleet.signal(first, signal.SIGKILL)
        second = fleet.leader(exclude=[first])
        wait_runs(log, 1)

        fleet.signal(second, signal.SIGSTOP)
        third = fleet.leader(exclude=[first, second])
        wait_runs(log, runs_while_paused)
        fleet.signal(second, signal.SIGCONT)
        wait_runs(log, 3)
        after_wake()

        fleet.signal(third, signal.SIGTERM)
        assert fleet.procs[third].wait(15) == 0
        assert fleet.leader(exclude=[first, third]) == second
        wait_runs(log, 1)
    finally:
        fleet.stop()


def assert_each_slot_once(log: Path, fleet: Fleet, terms: int = 3) -> list[dict]:
    """Every slot in ``log`` ran once, under a token, tokens in slot order, from ``terms`` terms at least."""
    records = runs(log)
    assert not duplicates(records), f"slots run more than once: {duplicates(records)}\n{fleet.output()}"
    assert all(r["token"] is not None for r in records)
    assert_tokens_follow_slots(records)
    assert len({r["token"] for r in records}) >= terms
    return records


def python() -> str:
    return sys.executable


soak = [
    pytest.mark.soak,
    pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1"),
]
