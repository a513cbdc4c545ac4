"""Sharing one Lease with client-go: Leases shaped exactly as client-go writes them are read,
respected and updated without losing fields, and what we write is what client-go writes."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from celery_leader.backends.kubernetes import PREFERRED_HOLDER_ANNOTATION, format_microtime, parse_microtime
from celery_leader.backends.kubernetes import lease as k8s_lease
from celery_leader.election import Election
from celery_leader.record import LeaderRecord

from .apiserver import APIError, LeaseAPIServer
from .conftest import NAMESPACE

FIXTURES = Path(__file__).parent / "fixtures"
GO_MICROTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
TIMEOUT = 5.0
LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def _load(server: LeaseAPIServer, fixture: str, name: str = "celery-beat") -> dict[str, Any]:
    """POST a client-go Lease through the validating path, as client-go's Create would."""
    obj = json.loads((FIXTURES / fixture).read_text())
    obj["metadata"]["name"] = name
    for server_set in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        obj["metadata"].pop(server_set, None)
    decoded, _ = server.decode_lease(json.dumps(obj).encode(), None, NAMESPACE, None)
    return server.create(NAMESPACE, decoded, "scheduler")


@pytest.mark.parametrize(
    "fixture, holder, duration, transitions, renew",
    [
        ("client_go_held.json", "scheduler-7d9f8c6b5-x2k4q_5c1e2f7a-0b1c-4d3e-9f8a-1b2c3d4e5f6a", 15.0, 3, "2024-05-02T08:14:02.114602Z"),
        ("client_go_released.json", "", 1.0, 4, "2024-05-02T08:20:11.000000Z"),
        ("client_go_coordinated.json", "controller-a", 15.0, 0, "2025-01-10T12:00:05.250001Z"),
    ],
)
def test_client_go_leases_are_read_exactly(apiserver, make_lock, fixture, holder, duration, transitions, renew) -> None:
    stored = _load(apiserver, fixture)
    got = make_lock("celery-beat").get(TIMEOUT)
    assert got is not None and got.version == stored["metadata"]["resourceVersion"]
    rec = got.record
    assert rec.decode_error is None
    assert (rec.holder, rec.lease_duration, rec.transitions) == (holder, duration, transitions)
    assert rec.renew_time == parse_microtime(renew)
    assert format_microtime(rec.renew_time) == renew, "microseconds must survive the round trip"
    assert rec.is_free == (holder == "")


def test_update_keeps_every_field_client_go_and_others_wrote(apiserver, make_lock) -> None:
    _load(apiserver, "client_go_held.json")
    lock = make_lock("celery-beat")
    got = lock.get(TIMEOUT)
    assert got is not None
    now = time.time()
    new = got.record.evolve(holder="py-1", transitions=4, acquire_time=now, renew_time=now, lease_duration=10.0)
    lock.update(new, got.version, TIMEOUT)
    after = apiserver.lease(NAMESPACE, "celery-beat")
    assert after is not None
    assert after["metadata"]["labels"] == {"app.kubernetes.io/name": "scheduler"}
    assert after["metadata"]["annotations"] == {"example.com/owner-team": "platform"}
    assert after["metadata"]["uid"] == apiserver.lease(NAMESPACE, "celery-beat")["metadata"]["uid"]
    spec = after["spec"]
    assert set(spec) == {"holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions"}
    assert spec["holderIdentity"] == "py-1" and spec["leaseDurationSeconds"] == 10 and spec["leaseTransitions"] == 4
    assert GO_MICROTIME.match(spec["acquireTime"]) and GO_MICROTIME.match(spec["renewTime"])
    assert not apiserver.warnings, "we sent a field the API server does not know"


def test_coordinated_lease_keeps_strategy_and_uses_spec_preferred_holder(apiserver, make_lock) -> None:
    _load(apiserver, "client_go_coordinated.json")
    lock = make_lock("celery-beat")
    got = lock.get(TIMEOUT)
    assert got is not None
    assert got.record.preferred_holder == "controller-b"
    assert got.record.extra == {"strategy": "OldestEmulationVersion"}
    lock.update(got.record.evolve(renew_time=time.time()), got.version, TIMEOUT)
    spec = apiserver.lease(NAMESPACE, "celery-beat")["spec"]
    assert spec["strategy"] == "OldestEmulationVersion" and spec["preferredHolder"] == "controller-b"
    # the holder steps down as the coordinator asked: preferredHolder cleared, strategy kept
    got = lock.get(TIMEOUT)
    lock.update(got.record.evolve(holder="", preferred_holder=""), got.version, TIMEOUT)
    spec = apiserver.lease(NAMESPACE, "celery-beat")["spec"]
    assert spec["strategy"] == "OldestEmulationVersion" and "preferredHolder" not in spec


def test_preferred_holder_without_strategy_goes_to_an_annotation(apiserver, make_lock) -> None:
    lock = make_lock("celery-beat")
    # the real API refuses spec.preferredHolder without spec.strategy
    bad = {"metadata": {"name": "x"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5, "preferredHolder": "b"}}
    with pytest.raises(APIError) as refused:
        apiserver.decode_lease(json.dumps(bad).encode(), None, NAMESPACE, None)
    assert refused.value.code == 422
    version = lock.create(LeaderRecord(holder="a", lease_duration=5, transitions=1, preferred_holder="*"), TIMEOUT)
    stored = apiserver.lease(NAMESPACE, "celery-beat")
    assert "preferredHolder" not in stored["spec"] and "strategy" not in stored["spec"]
    assert stored["metadata"]["annotations"] == {PREFERRED_HOLDER_ANNOTATION: "*"}
    assert lock.get(TIMEOUT).record.preferred_holder == "*"
    lock.update(LeaderRecord(holder="b", lease_duration=5, transitions=2), version, TIMEOUT)
    assert "annotations" not in apiserver.lease(NAMESPACE, "celery-beat")["metadata"]


def test_whole_seconds_rounded_up_with_one_warning(apiserver, make_lock, caplog) -> None:
    k8s_lease._warned_durations.discard(2.25)
    lock = make_lock("celery-beat")
    with caplog.at_level(logging.WARNING, logger="celery_leader"):
        v = lock.create(LeaderRecord(holder="a", lease_duration=2.25, transitions=1), TIMEOUT)
        lock.update(LeaderRecord(holder="a", lease_duration=2.25, transitions=1, renew_time=1.0), v, TIMEOUT)
    assert apiserver.lease(NAMESPACE, "celery-beat")["spec"]["leaseDurationSeconds"] == 3
    warnings = [r for r in caplog.records if "whole seconds" in r.getMessage()]
    assert len(warnings) == 1 and "leaseDurationSeconds=3" in warnings[0].getMessage()


def test_microtime_formatting_is_exact() -> None:
    assert format_microtime(0.0) == "1970-01-01T00:00:00.000000Z"
    assert format_microtime(1_700_000_000.0) == "2023-11-14T22:13:20.000000Z"  # microsecond 0 keeps its fraction
    assert format_microtime(1_700_000_000.000001) == "2023-11-14T22:13:20.000001Z"
    assert parse_microtime("2023-11-14T23:13:20.5+01:00") == 1_700_000_000.5
    with pytest.raises(ValueError):
        parse_microtime("2023-11-14 22:13:20")


class GoCandidate:
    """client-go's ``tryAcquireOrRenew`` against the server, writing Leases exactly as it does.

    Expiry from local observation: the lease is taken only when the record has not
    changed for ``leaseDurationSeconds`` since this candidate last saw it change.
    """

    def __init__(self, server: LeaseAPIServer, identity: str, name: str = "celery-beat", lease: int = 1, retry: float = 0.2):
        self.server, self.identity, self.name, self.lease, self.retry = server, identity, name, lease, retry
        self.observed: dict[str, Any] | None = None
        self.observed_at = 0.0
        self.leading_since: float | None = None
        self.acquired = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> GoCandidate:
        self._thread.start()
        return self

    def crash(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = format_microtime(time.time())
        mine = old is not None and old.get("holderIdentity") == self.identity
        transitions = (old or {}).get("leaseTransitions", 0) + (0 if mine or old is None else 1)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease,
            "acquireTime": old["acquireTime"] if mine else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.retry):
            current = self.server.lease(NAMESPACE, self.name)
            try:
                if current is None:
                    body = {"metadata": {"name": self.name}, "spec": self._spec(None)}
                    obj, _ = self.server.decode_lease(json.dumps(body).encode(), None, NAMESPACE, None)
                    self.server.create(NAMESPACE, obj, "go-candidate")
                    self.acquired.set()
                    continue
                spec = current["spec"]
                if spec != self.observed:
                    self.observed, self.observed_at = spec, time.monotonic()
                holder = spec.get("holderIdentity") or ""
                valid = self.observed_at + spec.get("leaseDurationSeconds", 0) > time.monotonic()
                if holder and holder != self.identity and valid:
                    continue
                current["spec"] = self._spec(spec)
                obj, _ = self.server.decode_lease(json.dumps(current).encode(), None, NAMESPACE, self.name)
                self.server.replace(NAMESPACE, self.name, obj, "go-candidate")
                self.acquired.set()
            except APIError:
                continue


def test_python_and_client_go_candidates_respect_each_other(apiserver, k8s_url) -> None:
    go = GoCandidate(apiserver, "go-1").start()
    assert go.acquired.wait(10)
    election = Election("celery-beat", url=k8s_url, identity="py-1", lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
    with election:
        # the Go holder renews: Python stands by however long it waits
        assert not election.wait_until_leader(timeout=2.0)  # twice the lease
        assert election.leader == "go-1"
        go.crash()  # no release, as a SIGKILLed pod
        assert election.wait_until_leader(timeout=10)
        taken = apiserver.lease(NAMESPACE, "celery-beat")["spec"]
        assert taken["holderIdentity"] == "py-1" and taken["leaseTransitions"] == go.observed["leaseTransitions"] + 1
        assert taken["leaseDurationSeconds"] == 1 and GO_MICROTIME.match(taken["renewTime"])
        # a Go standby now sees Python renew within leaseDurationSeconds and never takes over
        go2 = GoCandidate(apiserver, "go-2").start()
        time.sleep(2.0)  # twice the lease
        assert election.is_leader
        assert apiserver.lease(NAMESPACE, "celery-beat")["spec"]["holderIdentity"] == "py-1"
        go2.acquired.clear()
    # the election released on stop: client-go acquires at its next retry
    released = apiserver.lease(NAMESPACE, "celery-beat")["spec"]
    assert go2.acquired.wait(5), f"client-go did not take over the released Lease: {released}"
    go2.crash()
    final = apiserver.lease(NAMESPACE, "celery-beat")["spec"]
    assert final["holderIdentity"] == "go-2" and final["leaseTransitions"] == taken["leaseTransitions"] + 1


def test_the_last_once_per_slot_lives_in_an_annotation(apiserver, make_lock) -> None:
    # the API server drops unknown spec fields: an extra key in the spec would be lost
    from celery_leader.backends.kubernetes.lease import LAST_SLOT_ANNOTATION
    from celery_leader.once import LAST_SLOT_KEY

    lock = make_lock("cron-job")
    version = lock.create(LeaderRecord(holder="a", lease_duration=5, transitions=1), TIMEOUT)
    version = lock.update(
        LeaderRecord(holder="a", lease_duration=5, transitions=1, extra={LAST_SLOT_KEY: "2026-11-29T06:00:00Z/1h"}),
        version,
        TIMEOUT,
    )
    stored = apiserver.lease(NAMESPACE, "cron-job")
    assert stored["metadata"]["annotations"] == {LAST_SLOT_ANNOTATION: "2026-11-29T06:00:00Z/1h"}
    assert LAST_SLOT_KEY not in stored["spec"]
    got = lock.get(TIMEOUT)
    assert got.record.extra[LAST_SLOT_KEY] == "2026-11-29T06:00:00Z/1h"
    # a release (holder "") keeps it, as every write that carries the record's extras does
    lock.update(got.record.evolve(holder=""), got.version, TIMEOUT)
    assert lock.get(TIMEOUT).record.extra[LAST_SLOT_KEY] == "2026-11-29T06:00:00Z/1h"
