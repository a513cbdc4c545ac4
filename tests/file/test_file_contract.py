"""The backend contract suite against real files, flocks and a second process."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from celery_leader.backends.file import FileBackend
from celery_leader.testing import LockContract

from .conftest import flock_held_by_other_process


class TestFileLock(LockContract):
    @pytest.fixture
    def backend_url(self, lock_dir: Path) -> str:
        return f"file://{lock_dir}"  # every lock a new descriptor, so a new flock owner: a real race

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
