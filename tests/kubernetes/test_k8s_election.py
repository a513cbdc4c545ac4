"""The election engine on a Kubernetes Lease, in one process: handover through the watch, Events."""

from __future__ import annotations

import subprocess
import sys
import time

from celery_leader.backends.kubernetes import RBAC_VERBS
from celery_leader.election import Election

from ..elections import HANDOVER_WAIT, WATCHED, wait_for
from .conftest import NAMESPACE


def _election(url: str, identity: str, lease: float = 1.0, renew: float = 0.6, retry: float = 0.2) -> Election:
    return Election("beat", url=url, identity=identity, lease_duration=lease, renew_deadline=renew, retry_period=retry)


def test_graceful_handover_goes_through_the_watch(apiserver, k8s_url) -> None:
    apiserver.allowed_verbs = set(RBAC_VERBS)  # exactly the documented Role
    # WATCHED timing: the follower polls every 30 s and the lease is 60 s, so a takeover
    # within HANDOVER_WAIT (10 s) can only come from the watch
    first = Election("beat", url=k8s_url, identity="py-1", **WATCHED).start()
    second = Election("beat", url=k8s_url, identity="py-2", **WATCHED)
    try:
        assert first.wait_until_leader(10)
        second.start()
        # the follower has read the Lease and opened its watch
        wait_for(lambda: second.leader == "py-1" and apiserver.requests["watch"] >= 1)
        assert not second.is_leader
        first.stop()
        assert second.wait_until_leader(HANDOVER_WAIT), "no takeover within 10 s of the release: not through the watch"
        spec = apiserver.lease(NAMESPACE, "beat")["spec"]
        assert spec["holderIdentity"] == "py-2" and spec["leaseDurationSeconds"] == 60
    finally:
        first.stop()
        second.stop()


def test_leadership_events_are_recorded_when_asked(apiserver, k8s_url) -> None:
    election = _election(k8s_url + "&events=true", "py-1")
    with election:
        assert election.wait_until_leader(10)
        time.sleep(0.5)  # renewals must not emit events
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(apiserver.events) < 2:
        time.sleep(0.05)
    messages = [e["message"] for e in apiserver.events]
    assert messages == ["py-1 became leader", "py-1 stopped leading"], messages
    event = apiserver.events[0]
    assert event["reason"] == "LeaderElection" and event["type"] == "Normal"
    assert event["involvedObject"]["kind"] == "Lease" and event["involvedObject"]["name"] == "beat"
    assert event["involvedObject"]["uid"] == apiserver.lease(NAMESPACE, "beat")["metadata"]["uid"]


def test_no_events_unless_asked(apiserver, k8s_url) -> None:
    with _election(k8s_url, "py-1") as election:
        assert election.wait_until_leader(10)
    time.sleep(0.2)
    assert apiserver.events == []


def test_cli_status_and_step_down_through_the_annotation(apiserver, k8s_url) -> None:
    first = _election(k8s_url, "py-1").start()
    second = _election(k8s_url, "py-2").start()
    try:
        assert first.wait_until_leader(10)
        status = subprocess.run(
            [sys.executable, "-m", "celery_leader", "status", "--url", k8s_url, "--name", "beat"], capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0 and "py-1" in status.stdout, status
        step = subprocess.run(
            [sys.executable, "-m", "celery_leader", "step-down", "--url", k8s_url, "--name", "beat", "--to", "py-2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert step.returncode == 0, step
        assert second.wait_until_leader(10)
        lease = apiserver.lease(NAMESPACE, "beat")
        assert lease["spec"]["holderIdentity"] == "py-2"
        assert "preferredHolder" not in lease["spec"] and "strategy" not in lease["spec"]
        assert not (lease["metadata"].get("annotations") or {}), "the step-down request was not cleared"
    finally:
        first.stop()
        second.stop()
