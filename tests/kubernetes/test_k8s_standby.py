"""What a standby's read costs on the client side: the kubeconfig loader's per-request
refresh hook no longer scans the environment for a proxy on every request (counted)."""

from __future__ import annotations

import kubernetes.client.configuration as k8s_configuration

from celery_leader.testing import sample_record
from tests.elections import standby_follows_by_hints


def test_reads_do_not_look_up_the_proxy_again(open_backend, monkeypatch) -> None:
    lock = open_backend().lock("proxy-once")
    version = lock.create(sample_record(lease_duration=15.0), 5.0)
    calls = []
    original = k8s_configuration.getproxies
    monkeypatch.setattr(k8s_configuration, "getproxies", lambda: calls.append(1) or original())
    for _ in range(5):
        got = lock.get(5.0)
        assert got is not None and got.version == version
    assert calls == []


def test_the_proxy_from_the_environment_is_still_used(kubeconfig, monkeypatch) -> None:
    from celery_leader.backends.kubernetes import KubernetesBackend

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = KubernetesBackend.from_url(f"kubernetes://leader-test?kubeconfig={kubeconfig}")
    try:
        assert backend.api_client.configuration.proxy == "http://127.0.0.1:9"
    finally:
        backend.close()


def test_a_standby_follows_its_leaders_renewals_from_the_watch_events(open_backend) -> None:
    """Each renewal's watch event carries the Lease: the engine takes it as a hint."""
    standby_follows_by_hints("hints", open_backend(), open_backend().lock("hints"))
