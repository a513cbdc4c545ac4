"""The backend contract suite against a real etcd member."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from celery_leader.testing import LockContract

from .conftest import EtcdCluster


class TestEtcdLock(LockContract):
    @pytest.fixture
    def backend_url(self, etcd_server: EtcdCluster, prefix: str) -> str:
        return etcd_server.url(prefix)

    @pytest.fixture
    def write_raw(self, etcd_server: EtcdCluster, prefix: str):
        return lambda name, raw: etcd_server.put(f"{prefix}/lock/{name}", raw)

    @pytest.fixture
    def stalled_lock(self, etcd_factory: Callable[..., EtcdCluster], open_backend):
        @contextlib.contextmanager
        def stalled(name: str):
            cluster = etcd_factory(1)
            lock = open_backend(cluster.url()).lock(name)
            lock.get(5.0)  # connected before the member stops answering
            cluster.pause(0)
            try:
                yield lock
            finally:
                cluster.resume(0)

        return stalled
