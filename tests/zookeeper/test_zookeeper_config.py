"""URLs, start-up checks, digest authentication and hostile content: the errors users see
name the fix, and never show the password."""

from __future__ import annotations

import time

import pytest

from celery_leader.backends.zookeeper import ZooKeeperBackend, ZooKeeperLock
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend as registry_open
from celery_leader.testing import sample_record
from tests.locks import close_ends_a_waiting_watch, tokens_below_the_fence_are_refused
from tests.servers import free_port

from .conftest import ZooKeeper

T = 5.0
SECRET_Q = "s3cr%2Fet%3F%23pw"


def test_registry_maps_the_scheme_to_this_backend() -> None:
    backend = registry_open("zookeeper://127.0.0.1:2181,127.0.0.1:2182/myapp/leader?session_timeout=4")
    try:
        assert isinstance(backend, ZooKeeperBackend)
        assert backend.path == "/myapp/leader" and backend.session_timeout == 4.0
        lock = backend.lock("beat")
        assert isinstance(lock, ZooKeeperLock)
        assert lock.path == "/myapp/leader/lock/beat" and lock.fence_path == "/myapp/leader/fence/beat"
        caps = type(lock).capabilities
        assert caps.linearizable and caps.watch and caps.partition_safe
    finally:
        backend.close()


def test_defaults() -> None:
    backend = ZooKeeperBackend.from_url("zookeeper://zk1,zk2:2182")
    assert backend.hosts == [("zk1", 2181), ("zk2", 2182)]
    assert backend.path == "/celery-leader"


@pytest.mark.parametrize(
    "url, words",
    [
        ("zookeeper://127.0.0.1:2181/p?sesion_timeout=3", ["sesion_timeout", "known options"]),
        ("zookeeper://127.0.0.1:2181/p?session_timeout=0", ["session_timeout"]),
        ("zookeeper://127.0.0.1:x/p", ["bad port", "host:2181"]),
        ("zookeeper:///p", ["no ZooKeeper server"]),
        ("zookeeper://user@127.0.0.1/p", ["USER:PASSWORD@"]),
        ("zookeeper://127.0.0.1/a/../b", ["not valid"]),
        ("zookeeper://u:pw#x@127.0.0.1/p", ["%23"]),
    ],
)
def test_bad_urls_name_the_fix(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        ZooKeeperBackend.from_url(url)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x\x00"])
def test_names_that_are_not_node_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        ZooKeeperBackend.from_url("zookeeper://127.0.0.1/p").lock(name)


def test_describe_never_shows_the_password() -> None:
    backend = ZooKeeperBackend.from_url(f"zookeeper://app:{SECRET_Q}@127.0.0.1:2181/p")
    for text in (backend.describe(), backend.lock("x").describe()):
        assert "s3cr" not in text and "app" in text


def test_unreachable_server_is_unavailable_and_quick(open_backend) -> None:
    backend = open_backend(f"zookeeper://127.0.0.1:{free_port()}/p")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.check(0.3)
    with pytest.raises(BackendUnavailable):
        backend.lock("x").get(0.3)
    assert time.monotonic() - started < 10.0  # bounded by the timeouts (0.6 s), not kazoo's retries


def test_a_dead_server_in_the_list_is_skipped(zk_server: ZooKeeper, path: str, open_backend) -> None:
    backend = open_backend(f"zookeeper://127.0.0.1:{free_port()},127.0.0.1:{zk_server.client_ports[0]}{path}")
    backend.check(10.0)
    lock = backend.lock("x")
    version = lock.create(sample_record(), T)
    got = lock.get(T)
    assert got is not None and got.version == version


def test_huge_value_reads_as_undecodable(zk_server: ZooKeeper, zk_admin, path: str, open_backend) -> None:
    zk_admin.create(f"{path}/lock/big", b"{" + b" " * 200_000 + b"}", makepath=True)
    got = open_backend(zk_server.url(path)).lock("big").get(T)
    assert got is not None and got.record.decode_error and "too large" in got.record.decode_error


def test_tokens_below_the_fence_are_refused(zk_server: ZooKeeper, zk_admin, path: str, open_backend) -> None:
    lock = open_backend(zk_server.url(path)).lock("t")
    node = f"{path}/lock/t"
    tokens_below_the_fence_are_refused(lock, lambda raw: zk_admin.set(node, raw), lambda: zk_admin.delete(node))
    zk_admin.delete(node)
    with pytest.raises(Conflict):  # a create over a vanished node: the fence is there
        lock.create(sample_record(transitions=1), T)


def test_recreated_node_does_not_revive_an_old_version(zk_server: ZooKeeper, zk_admin, path: str, open_backend) -> None:
    # node versions restart at 0 when a node is recreated: the fence's version guards that
    lock = open_backend(zk_server.url(path)).lock("r")
    v0 = lock.create(sample_record(transitions=1), T)
    zk_admin.delete(f"{path}/lock/r")
    gone = lock.get(T)
    assert gone is not None
    lock.update(sample_record(transitions=2), gone.version, T)  # recreated: node version 0 again
    with pytest.raises(Conflict):
        lock.update(sample_record(transitions=3), v0, T)


def test_close_ends_a_waiting_watch(zk_server: ZooKeeper, path: str, open_backend) -> None:
    close_ends_a_waiting_watch(open_backend(zk_server.url(path)).lock("w"))


# --- digest authentication --------------------------------------------------------------


def test_digest_credentials_protect_the_nodes(zk_server: ZooKeeper, path: str, open_backend, caplog) -> None:
    owner = open_backend(zk_server.url(path, userinfo=f"app:{SECRET_Q}"))
    owner.check(T)
    lock = owner.lock("beat")
    version = lock.create(sample_record(), T)
    assert lock.update(sample_record(transitions=4), version, T)
    for userinfo in ("", "app:wrong", "other:pw"):
        intruder = open_backend(zk_server.url(path, userinfo=userinfo))
        with pytest.raises(ConfigurationError) as err:
            intruder.check(T)
        assert "NoAuth" in str(err.value) and "wrong" not in str(err.value)
        stolen = intruder.lock("beat")
        got = stolen.get(T)  # readable by anyone (status tools)
        assert got is not None and got.record.transitions == 4
        with pytest.raises(ConfigurationError):
            stolen.update(sample_record(holder="intruder", transitions=5), got.version, T)
    assert "s3cr" not in caplog.text
