"""Fixtures shared by the file:// backend tests: a fresh lock directory, a flock holder."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_leader.backends.file import FileBackend

HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o664)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    return d


@pytest.fixture
def backend(lock_dir: Path) -> Iterator[FileBackend]:
    b = FileBackend.from_url(f"file://{lock_dir}")
    yield b
    b.close()


@contextlib.contextmanager
def flock_held_by_other_process(lock_path: Path) -> Iterator[subprocess.Popen]:
    """Another process holds NAME.lock (a hung candidate) until the context ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
