"""The backend contract suite against a real ZooKeeper server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from benchmarks.tcpproxy import TcpProxy
from celery_leader.testing import LockContract

from .conftest import ZooKeeper


class TestZooKeeperLock(LockContract):
    @pytest.fixture
    def backend_url(self, zk_server: ZooKeeper, path: str) -> str:
        # the suite opens a new backend (a new kazoo session) for every lock: races between clients
        return zk_server.url(path)

    @pytest.fixture
    def write_raw(self, zk_admin, path: str):
        def write(name: str, raw: bytes) -> None:
            node = f"{path}/lock/{name}"
            if zk_admin.exists(node):
                zk_admin.set(node, raw)
            else:
                zk_admin.create(node, raw, makepath=True)

        return write

    @pytest.fixture
    def stalled_lock(self, zk_server: ZooKeeper, open_backend) -> Callable:
        @contextlib.contextmanager
        def stalled(name: str):
            # a proxy that holds every byte: the shared server itself keeps serving the others
            proxy = TcpProxy(zk_server.client_ports[0])
            try:
                lock = open_backend(f"zookeeper://127.0.0.1:{proxy.port}/stalled").lock(name)
                lock.get(5.0)  # connected before the server stops answering
                proxy.set_mode("blackhole")
                yield lock
            finally:
                proxy.close()

        return stalled
