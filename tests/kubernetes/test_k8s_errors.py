"""Bad paths: wrong configuration, missing permissions, the API server going away, odd content."""

from __future__ import annotations

import json
import time

import pytest

from celery_leader.backends.kubernetes import KubernetesBackend, lease_to_record
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend
from celery_leader.testing import sample_record

from .conftest import NAMESPACE

TIMEOUT = 5.0


def test_registry_opens_both_schemes(kubeconfig) -> None:
    for scheme in ("kubernetes", "k8s"):
        backend = open_backend(f"{scheme}://{NAMESPACE}?kubeconfig={kubeconfig}")
        try:
            assert isinstance(backend, KubernetesBackend) and backend.namespace == NAMESPACE
            assert NAMESPACE in backend.describe() and "token" not in backend.describe()
        finally:
            backend.close()


def test_namespace_defaults_to_the_kubeconfig_context(kubeconfig) -> None:
    backend = KubernetesBackend.from_url(f"kubernetes://?kubeconfig={kubeconfig}")
    try:
        assert backend.namespace == NAMESPACE
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("kubernetes://ns/extra?kubeconfig={kc}", "names only the namespace"),
        ("kubernetes://ns?kubeconfig={kc}&timeout=3", "unknown kubernetes:// option"),
        ("kubernetes://Bad_NS?kubeconfig={kc}", "not a Kubernetes namespace name"),
        ("kubernetes://ns?kubeconfig=/nonexistent/kubeconfig", "does not exist"),
        ("kubernetes://ns?kubeconfig={kc}&events=maybe", "events= must be true or false"),
        ("kubernetes://ns?kubeconfig={kc}&request_timeout=soon", "request_timeout= must be a number of seconds"),
        ("kubernetes://ns?kubeconfig={kc}&context=nope", "nope"),
    ],
)
def test_bad_urls_name_the_fix(kubeconfig, url, words) -> None:
    with pytest.raises(ConfigurationError, match=words):
        KubernetesBackend.from_url(url.format(kc=kubeconfig))


def test_no_configuration_at_all_says_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match="KUBECONFIG"):
        KubernetesBackend.from_url("kubernetes://ns")


@pytest.mark.parametrize("name", ["Celery_Beat", "-beat", "beat/1", ""])
def test_election_names_that_cannot_be_lease_names(backend, name) -> None:
    with pytest.raises(ConfigurationError, match="Lease name"):
        backend.lock(name)


def test_missing_namespace_is_a_configuration_error(open_backend, kubeconfig) -> None:
    lock = open_backend(f"kubernetes://no-such-ns?kubeconfig={kubeconfig}").lock("beat")
    assert lock.get(TIMEOUT) is None
    with pytest.raises(ConfigurationError, match="namespace 'no-such-ns' does not exist"):
        lock.create(sample_record(), TIMEOUT)


def test_wrong_credentials(apiserver, open_backend, tmp_path) -> None:
    path = apiserver.write_kubeconfig(tmp_path / "wrong", namespace=NAMESPACE, token="not-the-token")
    lock = open_backend(f"kubernetes://{NAMESPACE}?kubeconfig={path}").lock("beat")
    with pytest.raises(ConfigurationError, match="credentials"):
        lock.get(TIMEOUT)


def test_missing_rbac_verbs_are_named(apiserver, backend) -> None:
    backend.check(TIMEOUT)  # everything allowed: passes
    lock = backend.lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    apiserver.allowed_verbs = {"get", "list", "watch"}
    assert lock.get(TIMEOUT) is not None
    with pytest.raises(ConfigurationError) as err:
        lock.update(sample_record(holder="b"), version, TIMEOUT)
    message = str(err.value)
    assert "get, create, update, watch" in message and "coordination.k8s.io" in message and "RoleBinding" in message
    with pytest.raises(ConfigurationError, match="may not create, update Leases"):
        backend.check(TIMEOUT)
    apiserver.allowed_verbs = {"get", "create", "update"}
    with pytest.raises(ConfigurationError, match="may not watch"):
        backend.check(TIMEOUT)
    with pytest.raises(ConfigurationError, match="watch"):
        lock.wait_for_change(version, 2.0)


def test_server_down_is_unavailable_and_recovers(apiserver, backend) -> None:
    lock = backend.lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    apiserver.stop()
    for call in (lambda: lock.get(60.0), lambda: lock.update(sample_record(holder="b"), version, 60.0)):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            call()
        assert time.monotonic() - started < 10.0  # refused at once, not after the 60 s timeout
    apiserver.start()  # same port, same data; the pooled connection is dead
    got = None
    for _ in range(3):  # the first request may still meet the dead pooled connection
        try:
            got = lock.get(TIMEOUT)
            break
        except BackendUnavailable:
            continue
    assert got is not None and got.version == version
    lock.update(sample_record(holder="b"), version, TIMEOUT)


def test_update_with_a_version_this_lock_never_saw(apiserver, make_lock) -> None:
    a, b = make_lock("beat"), make_lock("beat")
    version = a.create(sample_record(), TIMEOUT)
    # b never read the Lease: it fetches the object behind the version before writing it back
    b.update(sample_record(holder="b"), version, TIMEOUT)
    with pytest.raises(Conflict):
        b.update(sample_record(holder="c"), version, TIMEOUT)
    with pytest.raises(Conflict):
        make_lock("beat").update(sample_record(holder="d"), "12345", TIMEOUT)


def test_deleted_lease_is_a_conflict_then_absent(apiserver, backend) -> None:
    lock = backend.lock("beat")
    version = lock.create(sample_record(transitions=7), TIMEOUT)
    apiserver.delete(NAMESPACE, "beat")
    with pytest.raises(Conflict):
        lock.update(sample_record(transitions=8), version, TIMEOUT)
    assert lock.get(TIMEOUT) is None


@pytest.mark.parametrize(
    "spec",
    [
        "not an object",
        {"holderIdentity": 42, "leaseDurationSeconds": 5},
        {"holderIdentity": "a", "leaseDurationSeconds": 5, "renewTime": "yesterday"},
        {"holderIdentity": "a", "leaseDurationSeconds": "5"},
        {"holderIdentity": "a", "leaseDurationSeconds": 0, "leaseTransitions": 9},
    ],
    ids=["spec-string", "holder-int", "bad-time", "duration-string", "held-zero-duration"],
)
def test_non_conforming_server_content_is_flagged_not_raised(apiserver, backend, spec) -> None:
    """What a real API server never returns, but a proxy or a fake might: still no crash."""
    apiserver.inject(NAMESPACE, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "beat"}, "spec": spec})
    lock = backend.lock("beat")
    got = lock.get(TIMEOUT)
    assert got is not None and got.record.decode_error and not got.record.is_free
    if isinstance(spec, dict) and spec.get("leaseTransitions"):
        assert got.record.transitions == spec["leaseTransitions"]
    lock.update(sample_record(transitions=10), got.version, TIMEOUT)
    assert lock.get(TIMEOUT).record.holder == "candidate-a"


def test_decoder_never_raises_on_any_json() -> None:
    for obj in (None, [], "x", {"spec": None}, {"spec": {"leaseTransitions": -1}}, {"metadata": "x", "spec": {}}):
        rec = lease_to_record(obj)
        assert rec.decode_error or rec.is_free, (obj, rec)
    assert json.dumps(lease_to_record({"spec": {}}).extra) == "{}"


def test_request_timeout_option_caps_calls(apiserver, open_backend, kubeconfig) -> None:
    lock = open_backend(f"kubernetes://{NAMESPACE}?kubeconfig={kubeconfig}&request_timeout=0.3").lock("beat")
    with apiserver.stall():
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            lock.get(120.0)
        assert time.monotonic() - started < 10.0  # capped at 0.3 s: the call's own timeout is two minutes
