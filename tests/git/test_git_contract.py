"""The backend contract suite on all three transports: local bare repo, git daemon, HTTP."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_leader.backends.git import GitBackend, GitLock
from celery_leader.testing import LockContract

from .conftest import Servers, daemon, http_bridge, paused, write_raw_commit


class _GitContract(LockContract):
    transport = ""

    @pytest.fixture
    def contract_repo(self, git_servers: Servers) -> Path:
        return git_servers.new_repo("contract")

    @pytest.fixture
    def backend_url(self, git_servers: Servers, contract_repo: Path) -> str:
        return git_servers.url(self.transport, contract_repo)

    @pytest.fixture
    def write_raw(self, contract_repo: Path):
        return lambda name, raw: write_raw_commit(contract_repo, f"refs/celery-leader/{name}", f"{name}.lock.json", raw)


class TestLocalRepoContract(_GitContract):
    transport = "file"

    @pytest.fixture
    def stalled_lock(self, contract_repo: Path):
        """The ref is a FIFO: reading it blocks in open(), as a hung NFS mount would."""

        @contextlib.contextmanager
        def stalled(name: str) -> Iterator[GitLock]:
            fifo = contract_repo / "refs" / "celery-leader" / name
            fifo.parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(fifo)
            backend = GitBackend.from_url(f"git+file://{contract_repo}")
            try:
                yield backend.lock(name)
            finally:
                try:  # let a blocked reader go, then remove the FIFO
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    os.close(fd)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                fifo.unlink()
                backend.close()

        return stalled


class TestGitDaemonContract(_GitContract):
    transport = "daemon"

    @pytest.fixture
    def stalled_lock(self, git_servers: Servers, contract_repo: Path):
        @contextlib.contextmanager
        def stalled(name: str) -> Iterator[GitLock]:
            with daemon(git_servers.root) as (proc, port), paused(proc):
                backend = GitBackend.from_url(f"git://127.0.0.1:{port}/{contract_repo.name}")
                yield backend.lock(name)
                backend.close()

        return stalled


class TestGitHttpContract(_GitContract):
    transport = "http"

    @pytest.fixture
    def stalled_lock(self, git_servers: Servers, contract_repo: Path):
        @contextlib.contextmanager
        def stalled(name: str) -> Iterator[GitLock]:
            with http_bridge(git_servers.root) as (proc, port), paused(proc):
                backend = GitBackend.from_url(f"git+http://127.0.0.1:{port}/{contract_repo.name}")
                yield backend.lock(name)
                backend.close()

        return stalled
