"""Helpers for tests that start real servers on 127.0.0.1.

A server that cannot start skips its tests on a developer's laptop, but fails them when
``CELERY_LEADER_REQUIRE_SERVICES=1`` (CI): CI never skips silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

import pytest

REQUIRED = os.environ.get("CELERY_LEADER_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip (laptop) or fail (CI) because a server or tool is missing."""
    if REQUIRED:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def need_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not found; {hint}")
    return path  # type: ignore[return-value]


def freeze(pid: int, *, group: bool = False, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` (or its process group) and return once every thread of it is stopped.

    ``kill`` only queues the signal: the target stops when one of its threads next runs,
    and on a busy machine another thread may first answer a request the test sends right
    after (a "stalled" server that answered). Tests that need a frozen server wait here.
    """
    if group:
        os.killpg(pid, signal.SIGSTOP)
    else:
        os.kill(pid, signal.SIGSTOP)
    pids = _group_members(pid) if group else [pid]
    deadline = time.monotonic() + timeout
    while not all(_all_threads_stopped(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout} s of SIGSTOP")
        time.sleep(0.005)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
    return found


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` in state T (stopped) or t (traced); a process gone counts."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return True
        time.sleep(0.02)
    return False


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGCONT (in case a test paused it), SIGTERM, then SIGKILL; always reaps."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def running(argv: Sequence[str], port: int | None = None, *, timeout: float = 15.0, **popen) -> Iterator[subprocess.Popen]:
    """Start a server process, wait for its port, and always stop it afterwards."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(list(argv), **popen)
    try:
        if port is not None and not wait_for_port(port, timeout):
            unavailable(f"{argv[0]} did not listen on 127.0.0.1:{port} within {timeout} s")
        yield proc
    finally:
        stop_process(proc)


class Members:
    """The processes ``procs[i]`` of a cluster of private servers, for tests to kill,
    pause (SIGSTOP: connections stay open, nothing answers), resume and stop."""

    procs: list[subprocess.Popen | None]

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def pause(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        freeze(proc.pid)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                stop_process(proc)


B = TypeVar("B", bound="Closable")


class Closable(Protocol):
    def close(self) -> None: ...


def closed_afterwards(open: Callable[[str], B]) -> Iterator[Callable[[str], B]]:
    """The body of an ``open_backend`` fixture (``yield from closed_afterwards(...)``):
    ``open_backend(url)`` is ``open(url)``, and everything it made is closed at teardown."""
    opened: list[B] = []

    def make(url: str) -> B:
        backend = open(url)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
