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
        os.kill(proc.pid, signal.SIGSTOP)

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
