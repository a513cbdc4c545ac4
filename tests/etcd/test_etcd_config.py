"""URLs, start-up checks, authentication and TLS: the errors users see name the fix, and
never show the password."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_leader import Election
from celery_leader.backends.etcd import EtcdBackend, EtcdLock
from celery_leader.lock import BackendUnavailable, ConfigurationError
from celery_leader.registry import open_backend as registry_open
from celery_leader.testing import sample_record
from tests.locks import close_ends_a_waiting_watch, tokens_below_the_fence_are_refused
from tests.servers import free_port

from .conftest import EtcdCluster, _b64

T = 5.0
SECRET = "s3cr/et?#pw"
SECRET_Q = "s3cr%2Fet%3F%23pw"


# --- URLs -------------------------------------------------------------------------------


def test_registry_maps_the_scheme_to_this_backend() -> None:
    backend = registry_open("etcd://127.0.0.1:2379,127.0.0.1:22379/myapp/leader")
    try:
        assert isinstance(backend, EtcdBackend)
        assert backend.prefix == "/myapp/leader"
        assert [str(e) for e in backend.endpoints] == ["127.0.0.1:2379", "127.0.0.1:22379"]
        lock = backend.lock("beat")
        assert isinstance(lock, EtcdLock)
        assert lock.key == "/myapp/leader/lock/beat" and lock.fence_key == "/myapp/leader/fence/beat"
        caps = type(lock).capabilities
        assert caps.linearizable and caps.watch and caps.partition_safe
    finally:
        backend.close()


def test_defaults_port_and_prefix() -> None:
    backend = EtcdBackend.from_url("etcd://etcd.internal,[::1]")
    assert [(e.host, e.port) for e in backend.endpoints] == [("etcd.internal", 2379), ("::1", 2379)]
    assert backend.prefix == "/celery-leader"
    assert str(backend.endpoints[1]) == "[::1]:2379"


@pytest.mark.parametrize(
    "url, words",
    [
        ("etcd://127.0.0.1:2379/p?prefx=a", ["prefx", "known options"]),
        ("etcd://127.0.0.1:x/p", ["bad port", "host:2379"]),
        ("etcd://127.0.0.1:99999/p", ["bad port"]),
        ("etcd:///p", ["no etcd host"]),
        ("etcd://user@127.0.0.1/p", ["USER:PASSWORD@"]),
        ("etcd://127.0.0.1/p?cert=/tmp/c.pem", ["?key="]),
        ("etcd://127.0.0.1/p?cacert=/nonexistent/ca.pem", ["not found", "cacert"]),
        ("etcd://127.0.0.1/p?cacert=/tmp/x&tls=false", ["need TLS"]),
        ("etcd://127.0.0.1/p?tls=maybe", ["tls", "true or false"]),
        ("etcd://127.0.0.1/p?connect_timeout=-1", ["connect_timeout"]),
        ("etcd://u:pw#x@127.0.0.1/p", ["%23"]),
    ],
)
def test_bad_urls_name_the_fix(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        EtcdBackend.from_url(url)
    for word in words:
        assert word in str(err.value)
    assert "pw" not in str(err.value).replace("PASSWORD", "")


def test_describe_never_shows_the_password() -> None:
    backend = EtcdBackend.from_url(f"etcd://app:{SECRET_Q}@127.0.0.1:2379/p")
    for text in (backend.describe(), backend.lock("x").describe()):
        assert "s3cr" not in text and SECRET_Q not in text
    assert "app" in backend.describe()


def test_empty_election_name_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        EtcdBackend.from_url("etcd://127.0.0.1/p").lock("")


# --- reaching the cluster ---------------------------------------------------------------


def test_connection_refused_is_unavailable_and_quick(open_backend) -> None:
    backend = open_backend(f"etcd://127.0.0.1:{free_port()}/p")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.check(60.0)
    with pytest.raises(BackendUnavailable):
        backend.lock("x").get(60.0)
    assert time.monotonic() - started < 10.0  # refused at once: waiting out the timeouts would take two minutes


def test_a_dead_member_in_the_list_is_skipped(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    url = f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoints()}{prefix}"
    backend = open_backend(url)
    backend.check(T)
    lock = backend.lock("x")
    version = lock.create(sample_record(), T)
    got = lock.get(T)
    assert got is not None and got.version == version
    # later calls start at the member that answered
    assert backend.endpoints[backend._preferred].port == etcd_server.client_ports[0]


class _NotEtcd(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"something": "else"}' if self.path == "/version" else b"nope"
        self.send_response(200 if self.path == "/version" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_etcd() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotEtcd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_etcd_is_a_configuration_error(not_etcd: int, open_backend) -> None:
    with pytest.raises(ConfigurationError, match="does not look like etcd"):
        open_backend(f"etcd://127.0.0.1:{not_etcd}/p").check(T)
    with pytest.raises(ConfigurationError, match="404"):
        open_backend(f"etcd://127.0.0.1:{not_etcd}/p").lock("x").get(T)


def test_the_peer_port_is_not_the_client_port(etcd_server: EtcdCluster, open_backend) -> None:
    with pytest.raises(ConfigurationError):
        open_backend(f"etcd://127.0.0.1:{etcd_server.peer_ports[0]}/p").check(T)


# --- hostile content --------------------------------------------------------------------


def test_huge_value_reads_as_undecodable(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    etcd_server.put(f"{prefix}/lock/big", b"{" + b" " * 200_000 + b"}")
    got = open_backend(etcd_server.url(prefix)).lock("big").get(T)
    assert got is not None and got.record.decode_error and "too large" in got.record.decode_error


def test_fence_holding_garbage_is_replaced_by_the_next_write(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    lock = open_backend(etcd_server.url(prefix)).lock("f")
    version = lock.create(sample_record(transitions=4), T)
    etcd_server.put(f"{prefix}/fence/f", b"not a number")
    got = lock.get(T)
    assert got is not None and got.version != version  # the fence changed: a new version
    assert got.record.transitions == 4
    lock.update(sample_record(transitions=5), got.version, T)
    assert etcd_server.get(f"{prefix}/fence/f") == b"5"


def test_tokens_below_the_fence_are_refused(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    lock = open_backend(etcd_server.url(prefix)).lock("t")
    key = f"{prefix}/lock/t"
    tokens_below_the_fence_are_refused(lock, lambda raw: etcd_server.put(key, raw), lambda: etcd_server.delete(key))


def test_create_over_a_vanished_lock_conflicts(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    from celery_leader.lock import Conflict

    lock = open_backend(etcd_server.url(prefix)).lock("v")
    lock.create(sample_record(transitions=3), T)
    etcd_server.delete(f"{prefix}/lock/v")
    with pytest.raises(Conflict):
        lock.create(sample_record(transitions=1), T)


def test_close_ends_a_waiting_watch(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    close_ends_a_waiting_watch(open_backend(etcd_server.url(prefix)).lock("w"))


# --- authentication ---------------------------------------------------------------------


@pytest.fixture
def auth_cluster(etcd_factory: Callable[..., EtcdCluster]) -> EtcdCluster:
    """A member with authentication on: root, and user ``app`` allowed only under /app/."""
    cluster = etcd_factory(1, "--auth-token", "simple", "--auth-token-ttl", "1")
    steps = [
        ("auth/user/add", {"name": "root", "password": "rootpw"}),
        ("auth/role/add", {"name": "root"}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/user/add", {"name": "app", "password": SECRET}),
        ("auth/role/add", {"name": "app"}),
        ("auth/role/grant", {"name": "app", "perm": {"key": _b64("/app/"), "range_end": _b64("/app0"), "permType": "READWRITE"}}),
        ("auth/user/grant", {"user": "app", "role": "app"}),
        ("auth/enable", {}),
    ]
    for path, body in steps:
        status, reply = cluster.post(0, path, body)
        assert status == 200, (path, reply)
    return cluster


def test_authentication_round_trip_and_token_renewal(auth_cluster: EtcdCluster, open_backend, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_leader")
    backend = open_backend(auth_cluster.url("/app/leader", userinfo=f"app:{SECRET_Q}"))
    backend.check(T)
    lock = backend.lock("beat")
    version = lock.create(sample_record(), T)
    time.sleep(2.5)  # the simple token's TTL (1 s) runs out: the next call signs in again
    version = lock.update(sample_record(transitions=4), version, T)
    got = lock.get(T)
    assert got is not None and got.version == version and got.record.transitions == 4
    e = Election("beat", backend=backend, identity="auth", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    with e:
        assert e.wait_until_leader(15)
    assert "s3cr" not in caplog.text


@pytest.mark.parametrize(
    "userinfo, words",
    [("", ["USER:PASSWORD@"]), ("app:wrong", ["refused the user name or password"]), ("nobody:x", ["refused"])],
)
def test_bad_credentials_are_configuration_errors(auth_cluster: EtcdCluster, open_backend, userinfo, words) -> None:
    backend = open_backend(auth_cluster.url("/app/leader", userinfo=userinfo))
    for call in (lambda: backend.check(T), lambda: backend.lock("x").get(T)):
        with pytest.raises(ConfigurationError) as err:
            call()
        for word in words:
            assert word in str(err.value)
        assert "wrong" not in str(err.value)


def test_prefix_outside_the_users_permission_names_the_grant(auth_cluster: EtcdCluster, open_backend) -> None:
    backend = open_backend(auth_cluster.url("/other", userinfo=f"app:{SECRET_Q}"))
    with pytest.raises(ConfigurationError) as err:
        backend.check(T)
    assert "permission denied" in str(err.value) and "grant-permission" in str(err.value)
    assert "s3cr" not in str(err.value)
    with pytest.raises(ConfigurationError):
        backend.lock("x").create(sample_record(), T)


def test_credentials_on_a_cluster_without_authentication_are_ignored(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    backend = open_backend(etcd_server.url(prefix, userinfo="app:pw"))
    backend.check(T)
    assert backend.lock("x").create(sample_record(), T)


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    pytest.importorskip("cryptography")
    from tests.redis.test_redis_tls import make_pki

    return make_pki(tmp_path, "server"), make_pki(tmp_path, "other")


def _tls_cluster(etcd_factory, pki: dict[str, Path], *extra: str) -> EtcdCluster:
    """A TLS-only member with the server certificate of ``pki``."""
    cluster = etcd_factory(
        1, "--cert-file", str(pki["cert"]), "--key-file", str(pki["key"]), *extra,
        start=False,
    )  # fmt: skip
    cluster.scheme = "https"
    cluster.client_cert = (str(pki["cert"]), str(pki["key"]))
    return cluster.start()


def test_tls_round_trip_and_election(etcd_factory, pki, open_backend) -> None:
    server, _ = pki
    cluster = _tls_cluster(etcd_factory, server)
    url = cluster.url("/tls", query=f"cacert={server['ca']}")
    backend = open_backend(url)
    backend.check(T)
    lock = backend.lock("x")
    v = lock.create(sample_record(), T)
    got = lock.get(T)
    assert got is not None and got.version == v
    e = Election("beat", url=url, identity="tls", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    with e:
        assert e.wait_until_leader(15)


def test_tls_mistakes_are_configuration_errors(etcd_factory, pki, open_backend) -> None:
    server, other = pki
    cluster = _tls_cluster(etcd_factory, server)
    with pytest.raises(ConfigurationError, match="cacert"):
        open_backend(cluster.url("/tls", query=f"cacert={other['ca']}")).check(T)
    with pytest.raises(ConfigurationError, match="tls=true"):
        open_backend(cluster.url("/tls")).check(T)


def test_tls_to_a_plain_member_is_a_configuration_error(etcd_server: EtcdCluster, open_backend) -> None:
    with pytest.raises(ConfigurationError, match="does not speak TLS"):
        open_backend(etcd_server.url("/p", query="tls=true")).check(T)


def test_client_certificate(etcd_factory, pki, open_backend) -> None:
    server, _ = pki
    # (etcd 3.4 demands client certificates as soon as it is given a CA to check them with)
    cluster = _tls_cluster(etcd_factory, server, "--trusted-ca-file", str(server["ca"]), "--client-cert-auth")
    with pytest.raises(ConfigurationError, match="client certificate"):
        open_backend(cluster.url("/tls", query=f"cacert={server['ca']}")).check(T)
    good = open_backend(cluster.url("/tls", query=f"cacert={server['ca']}&cert={server['cert']}&key={server['key']}"))
    good.check(T)
    assert good.lock("x").create(sample_record(), T)
