"""N ``celery-leader run`` candidates as real processes, and a checker of what they did.

Each candidate runs :mod:`celery_leader.testing.child` as its command; the child logs when
it starts and stops leading, with its fencing token. :meth:`ElectorCluster.check` reads
those logs and reports overlapping leadership, token regressions and the gaps without a
leader. Used by the process tests of every backend, the chaos harness and ``demo``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ElectorCluster", "Interval", "Report", "read_intervals", "check_intervals", "pid_alive", "wait_dead"]


@dataclass
class Interval:
    """One child's leadership, from its ``start`` line to its ``stop`` line or last ``beat``."""

    node: str
    token: int
    pid: int
    start: float
    end: float  # stop line, or the last beat
    #: end of the part that ran normally: the last beat before the first long silence
    #: (the process was paused); what follows is the child's own shutdown after resuming
    effective_end: float
    stopped_cleanly: bool

    @property
    def tail(self) -> float:
        return self.end - self.effective_end


@dataclass
class Report:
    intervals: list[Interval]
    overlaps: list[tuple[Interval, Interval, float]] = field(default_factory=list)
    token_regressions: list[tuple[Interval, Interval]] = field(default_factory=list)
    #: (previous interval, next interval, seconds without a leader in between)
    gaps: list[tuple[Interval, Interval, float]] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.overlaps and not self.token_regressions

    def assert_safe(self) -> None:
        if self.safe:
            return
        lines = ["leadership safety violated:"]
        for a, b, seconds in self.overlaps:
            lines.append(f"  overlap {seconds:.3f}s: {a.node} token {a.token} and {b.node} token {b.token}")
        for a, b in self.token_regressions:
            lines.append(f"  token regression: {a.node} token {a.token} then {b.node} token {b.token}")
        raise AssertionError("\n".join(lines))

    def summary(self) -> str:
        rows = [f"{len(self.intervals)} terms, {len(self.overlaps)} overlaps, {len(self.token_regressions)} token regressions"]
        for prev, nxt, gap in self.gaps:
            rows.append(f"  {prev.node}#{prev.token} -> {nxt.node}#{nxt.token}: {gap:.3f}s without a leader")
        return "\n".join(rows)


def _interval(start: dict, beats: list[float], stop_time: float | None, pause_threshold: float) -> Interval:
    times = [start["t"], *beats] + ([stop_time] if stop_time is not None else [])
    effective = times[-1]
    for a, b in zip(times, times[1:]):
        if b - a > pause_threshold:
            effective = a
            break
    return Interval(
        node=start["node"],
        token=start["token"],
        pid=start["pid"],
        start=start["t"],
        end=times[-1],
        effective_end=effective,
        stopped_cleanly=stop_time is not None,
    )


def read_intervals(paths: Iterable[Path], pause_threshold: float = 0.5) -> list[Interval]:
    """Parse child logs into intervals (sorted by start)."""
    intervals: list[Interval] = []
    for path in paths:
        current: dict | None = None
        beats: list[float] = []
        with contextlib.suppress(FileNotFoundError), open(path) as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue  # a line torn by SIGKILL
                if ev.get("e") == "start":
                    if current is not None:
                        intervals.append(_interval(current, beats, None, pause_threshold))
                    current, beats = ev, []
                elif current is not None and ev.get("pid") == current["pid"]:
                    if ev["e"] == "beat":
                        beats.append(ev["t"])
                    elif ev["e"] == "stop":
                        intervals.append(_interval(current, beats, ev["t"], pause_threshold))
                        current, beats = None, []
        if current is not None:
            intervals.append(_interval(current, beats, None, pause_threshold))
    intervals.sort(key=lambda iv: iv.start)
    return intervals


def check_intervals(intervals: Sequence[Interval]) -> Report:
    """Overlaps (by effective end), token order and gaps of a set of intervals."""
    ordered = sorted(intervals, key=lambda iv: iv.start)
    report = Report(list(ordered))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start >= a.effective_end:
                continue
            if a.pid != b.pid:
                report.overlaps.append((a, b, min(a.effective_end, b.effective_end) - b.start))
    for a, b in zip(ordered, ordered[1:]):
        if b.token <= a.token:
            report.token_regressions.append((a, b))
        report.gaps.append((a, b, b.start - a.effective_end))
    return report


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_dead(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone (or a zombie); False if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants as /proc lists them now (a running tree may change meanwhile)."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


#: how long :func:`_freeze` waits for one process to be seen stopped (a loaded machine is slow)
FREEZE_TIMEOUT = 60.0


def _freeze(root: int, timeout: float = FREEZE_TIMEOUT) -> list[int]:
    """SIGSTOP ``root`` and all its descendants, top down; returns their pids, parents first.

    Race-free: each process is seen stopped (every thread in state ``T``) before its
    children are read. A stopped process starts no child, and it reaps none, so a child
    that exits meanwhile stays a zombie and its pid cannot be reused: the pids read are
    the tree as it is, and stay those processes until :func:`_thaw`. Reading the
    children first and stopping afterwards (as this once did) could stop a stranger
    (a pid reused after ``run`` restarted its child), or miss the child ``run`` started
    in between. ``root`` must be an unreaped child of ours (a ``Popen`` whose ``poll()``
    returned None). The stopped processes' children are read again until nothing new
    appears, so an orphan re-parented to an already stopped subreaper is stopped too.
    """
    frozen: list[int] = []
    seen: set[int] = set()
    todo = [root]
    try:
        while todo:
            while todo:
                pid = todo.pop(0)
                if pid in seen:
                    continue
                seen.add(pid)
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                frozen.append(pid)
                _wait_stopped(pid, timeout)
                todo.extend(_children(pid))
            # a process that exited before it was stopped left its children to a subreaper
            # (the supervisor), maybe after that was read: read the stopped ones again
            todo = [kid for pid in frozen for kid in _children(pid) if kid not in seen]
    except BaseException:
        _thaw(frozen)
        raise
    return frozen


def _thaw(frozen: Sequence[int]) -> None:
    """SIGCONT what :func:`_freeze` stopped, children first.

    Each process is continued while its parent is still stopped (so its pid is still
    its own: nobody has reaped it); once continued, a parent may reap its children,
    which are not signalled again.
    """
    for pid in reversed(frozen):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _task_states(pid: int) -> list[str] | None:
    """The state letter of every thread of ``pid`` (``/proc``), or None where there is no /proc entry."""
    tasks = Path(f"/proc/{pid}/task")
    states = []
    try:
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that just exited
                stat = (task / "stat").read_text()
                states.append(stat.rsplit(")", 1)[1].split()[0])
    except OSError:
        return None
    return states


def _wait_stopped(pid: int, timeout: float) -> None:
    """Until every thread of ``pid`` is stopped (``T``/``t``) or dead (``Z``/``X``): SIGSTOP acts asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        states = _task_states(pid)
        if states is None or all(state in "TtZX" for state in states):
            return  # gone, or no /proc here (then the tree below is not read either)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"pid {pid} did not stop within {timeout} s of SIGSTOP (thread states {states})")
        time.sleep(0.001)


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (of all its threads), from ``/proc/PID/task/TID/children``."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


class ElectorCluster:
    """``n`` candidates: ``celery-leader run --url URL --name NAME ... -- child LOG``.

    ``url`` is one URL for all, or one per candidate (e.g. each through its own proxy).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        name: str,
        n: int = 3,
        *,
        workdir: str | os.PathLike[str],
        lease_duration: float = 1.0,
        renew_deadline: float = 0.6,
        retry_period: float = 0.2,
        grace: float | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        beat_interval: float = 0.02,
        pause_threshold: float | None = None,
    ) -> None:
        self.urls = [url] * n if isinstance(url, str) else list(url)
        if len(self.urls) != n:
            raise ValueError(f"{len(self.urls)} URLs for {n} candidates")
        self.name, self.n = name, n
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timing = (lease_duration, renew_deadline, retry_period)
        self.grace = grace
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.beat_interval = beat_interval
        self.pause_threshold = pause_threshold if pause_threshold is not None else max(0.3, retry_period * 2)
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.generation = [0] * n

    # --- processes ---------------------------------------------------------------------

    def identity(self, i: int) -> str:
        return f"node{i}"

    def log_path(self, i: int) -> Path:
        return self.workdir / f"node{i}.log"

    def command(self, i: int) -> list[str]:
        lease, renew, retry = self.timing
        argv = [
            sys.executable, "-m", "celery_leader", "run",
            "--url", self.urls[i], "--name", self.name, "--identity", self.identity(i),
            "--lease-duration", str(lease), "--renew-deadline", str(renew), "--retry-period", str(retry),
        ]  # fmt: skip
        if self.grace is not None:
            argv += ["--grace", str(self.grace)]
        argv += self.extra_args
        argv += ["--", sys.executable, "-m", "celery_leader.testing.child", str(self.log_path(i)), str(self.beat_interval)]
        return argv

    def spawn(self, i: int) -> subprocess.Popen:
        out = open(self.workdir / f"node{i}.{self.generation[i]}.out", "wb")
        self.generation[i] += 1
        proc = subprocess.Popen(self.command(i), env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs[i] = proc
        return proc

    def start(self) -> ElectorCluster:
        for i in range(self.n):
            self.spawn(i)
        return self

    def proc(self, i: int) -> subprocess.Popen:
        proc = self.procs[i]
        if proc is None:
            raise RuntimeError(f"node {i} is not running")
        return proc

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``i``'s ``run`` process (SIGKILL by default; its child dies with it)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc(i).send_signal(sig)

    def terminate(self, i: int) -> None:
        self.kill(i, signal.SIGTERM)

    def pause(self, i: int, seconds: float) -> None:
        """Freeze node ``i`` (``run`` and its child, as a VM pause would) for ``seconds``.

        The whole tree is stopped before the ``seconds`` start (see :func:`_freeze`), so no
        pid read here can belong to a process started, or reused, after the read.
        """
        proc = self.proc(i)
        frozen = _freeze(proc.pid) if proc.poll() is None else []
        time.sleep(seconds)
        _thaw(frozen)

    def wait_exit(self, i: int, timeout: float = 15.0) -> int | None:
        try:
            return self.proc(i).wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, i: int, timeout: float = 15.0) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            self.kill(i, signal.SIGKILL)
            proc.wait(timeout)
        self.spawn(i)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGCONT and SIGTERM every node, then SIGKILL whatever is left (and its children)."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            for pid in [proc.pid, *_descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for pid in [*_descendants(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(5)

    def __enter__(self) -> ElectorCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -------------------------------------------------------------------

    def intervals(self) -> list[Interval]:
        return read_intervals((self.log_path(i) for i in range(self.n)), self.pause_threshold)

    def terms(self, i: int) -> list[Interval]:
        """Node ``i``'s leadership intervals, oldest first."""
        return [iv for iv in self.intervals() if iv.node == self.identity(i)]

    def current_leader(self, fresh: float = 0.5) -> int | None:
        """The node whose child is leading now (an open interval with a recent beat)."""
        now = time.time()
        best: tuple[int, int] | None = None
        for iv in self.intervals():
            if iv.stopped_cleanly or now - iv.end > fresh:
                continue
            i = int(iv.node.removeprefix("node"))
            if best is None or iv.token > best[1]:
                best = (i, iv.token)
        return best[0] if best else None

    def wait_for_leader(self, timeout: float = 20.0, exclude: Iterable[int] = ()) -> int:
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.current_leader()
            if leader is not None and leader not in excluded:
                return leader
            time.sleep(0.02)
        raise AssertionError(
            f"no leader (other than {sorted(excluded)}) within {timeout} s; logs in {self.workdir}"
        )

    def check(self) -> Report:
        return check_intervals(self.intervals())
