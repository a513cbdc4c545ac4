"""Fixtures: an in-test Lease API server on 127.0.0.1 and backends that reach it through a kubeconfig."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_leader.backends.kubernetes import KubernetesBackend, KubernetesLock

from ..servers import unavailable
from .apiserver import LeaseAPIServer

NAMESPACE = "leader-test"


@pytest.fixture
def apiserver() -> Iterator[LeaseAPIServer]:
    server = LeaseAPIServer(namespaces=("default", NAMESPACE), known_spec_fields=("someFutureField",))
    try:
        server.start()
    except OSError as exc:
        unavailable(f"the in-test Lease API server could not listen on 127.0.0.1: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(apiserver: LeaseAPIServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)


@pytest.fixture
def k8s_url(kubeconfig: Path) -> str:
    return f"kubernetes://{NAMESPACE}?kubeconfig={kubeconfig}"


@pytest.fixture
def open_backend(k8s_url: str) -> Iterator[Callable[..., KubernetesBackend]]:
    """``open_backend(url=None)``: a new backend (own client, own connections); closed afterwards."""
    opened: list[KubernetesBackend] = []

    def make(url: str | None = None) -> KubernetesBackend:
        backend = KubernetesBackend.from_url(url or k8s_url)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(open_backend) -> KubernetesBackend:
    return open_backend()


@pytest.fixture
def make_lock(open_backend) -> Iterator[Callable[[str], KubernetesLock]]:
    locks: list[KubernetesLock] = []

    def make(name: str) -> KubernetesLock:
        lock = open_backend().lock(name)
        locks.append(lock)
        return lock

    yield make
    for lock in locks:
        lock.close()


@pytest.fixture
def stalled_lock(apiserver: LeaseAPIServer, make_lock):
    @contextlib.contextmanager
    def stalled(name: str) -> Iterator[KubernetesLock]:
        lock = make_lock(name)
        with apiserver.stall():
            yield lock

    return stalled
