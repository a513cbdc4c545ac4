"""``rediss://`` against a TLS-only redis-server with a self-signed CA made in the test."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest

from celery_leader import Election
from celery_leader.lock import ConfigurationError
from celery_leader.testing import sample_record
from tests.servers import free_port, unavailable, wait_for_port

from .conftest import RedisServer

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, name: str) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = _cert(f"{name} test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("127.0.0.1", key, ca_name, ca_key, ca=False)
    paths = {"ca": directory / f"{name}-ca.pem", "cert": directory / f"{name}-cert.pem", "key": directory / f"{name}-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, paths["key"])
    return paths


@pytest.fixture
def tls_server(redis_server_factory, tmp_path: Path) -> tuple[int, dict[str, Path], dict[str, Path]]:
    pki = make_pki(tmp_path, "server")
    other = make_pki(tmp_path, "other")
    port = free_port()
    server: RedisServer = redis_server_factory(
        "--tls-port", str(port), "--tls-cert-file", str(pki["cert"]), "--tls-key-file", str(pki["key"]),
        "--tls-ca-cert-file", str(pki["ca"]), "--tls-auth-clients", "no",
        start=False,
    )  # fmt: skip
    # a build without TLS refuses --tls-port and never starts: start() then skips (laptop) or fails (CI)
    server.start()  # the plain port answers the readiness ping; clients use the TLS port
    if not wait_for_port(port, 10):
        unavailable(f"redis-server did not open its TLS port {port}")
    return port, pki, other


def test_rediss_round_trip_and_election(tls_server, open_backend) -> None:
    port, pki, _ = tls_server
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki['ca']}"
    backend = open_backend(url)
    backend.check(5.0)
    lock = backend.lock("x")
    v = lock.create(sample_record(), 5.0)
    got = lock.get(5.0)
    assert got is not None and got.version == v and got.record == sample_record()
    started = time.monotonic()
    lock.wait_for_change(v, 0.3)
    assert time.monotonic() - started >= 0.25
    e = Election("beat", url=url, identity="tls", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    with e:
        assert e.wait_until_leader(15)
        assert e.token is not None and e.token >= 1


def test_untrusted_certificate_is_a_configuration_error(tls_server, open_backend) -> None:
    port, _, other = tls_server
    with pytest.raises(ConfigurationError, match="ssl_ca_certs"):
        open_backend(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other['ca']}").check(5.0)
    with pytest.raises(ConfigurationError, match="ssl_ca_certs"):
        open_backend(f"rediss://127.0.0.1:{port}/0").lock("x").get(5.0)
