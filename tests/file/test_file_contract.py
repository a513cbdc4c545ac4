"""The backend contract suite against real files, flocks and a second process."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from celery_leader.backends.file import FileBackend, FileLock
from celery_leader.testing import LockContract

from .conftest import flock_held_by_other_process


class TestFileLock(LockContract):
    @pytest.fixture
    def make_lock(self, backend: FileBackend):
        opened: list[FileLock] = []

        def make(name: str) -> FileLock:
            lock = backend.lock(name)  # a new descriptor, so a new flock owner: a real race
            opened.append(lock)
            return lock

        yield make
        for lock in opened:
            lock.close()

    @pytest.fixture
    def write_raw(self, lock_dir: Path):
        # a foreign writer: plain bytes, not through the backend
        return lambda name, raw: (lock_dir / f"{name}.lease.json").write_bytes(raw)

    @pytest.fixture
    def stalled_lock(self, backend: FileBackend, lock_dir: Path):
        @contextlib.contextmanager
        def stalled(name: str):
            lock = backend.lock(name)
            try:
                with flock_held_by_other_process(lock_dir / f"{name}.lock"):
                    yield lock
            finally:
                lock.close()

        return stalled
