"""The backend contract suite through the official client against the in-test Lease API server.

What "raw content" means for a typed API: ``write_raw`` stores a Lease, never bytes.
A record in the Go seed's JSON becomes the Lease spec client-go would write for it (unknown
keys become spec fields, which this server keeps because it is configured as a newer server
that knows ``someFutureField``). Anything else -- binary, truncated JSON, a list, a
holder that is not a string -- becomes the one kind of Lease the real API accepts but
that cannot be a leader record for us: a *held* Lease without ``leaseDurationSeconds``
(client-go would take it over at once; we cannot know how long its holder believes it
holds, so we treat it as held by an unknown holder, DESIGN.md section 2). The raw bytes
are kept in an annotation so that two different garbage writes are two different Leases.
"""

from __future__ import annotations

import base64
import json
import math

import pytest

from celery_leader.backends.kubernetes import format_microtime
from celery_leader.lock import Conflict, Versioned
from celery_leader.testing import LockContract, sample_record

from .apiserver import LeaseAPIServer
from .conftest import NAMESPACE

TIMEOUT = 5.0


def _seed_record_to_lease(doc: dict) -> dict:
    """A Go-seed JSON record -> the Lease spec client-go would write for it."""
    known = {"holderIdentity", "leaseDurationMilliSeconds", "acquireTime", "renewTime", "leaderTransitions"}
    spec = {
        "holderIdentity": doc["holderIdentity"],
        "leaseDurationSeconds": math.ceil(doc["leaseDurationMilliSeconds"] / 1000),
        "acquireTime": format_microtime(doc["acquireTime"] / 1000),
        "renewTime": format_microtime(doc["renewTime"] / 1000),
        "leaseTransitions": doc["leaderTransitions"],
    }
    spec.update({k: v for k, v in doc.items() if k not in known})
    return spec


def _write_raw(server: LeaseAPIServer, name: str, raw: bytes) -> None:
    try:
        doc = json.loads(raw)
        spec = _seed_record_to_lease(doc) if isinstance(doc, dict) and isinstance(doc.get("holderIdentity"), str) else None
    except (ValueError, KeyError, TypeError):
        spec = None
    annotations = {}
    if spec is None:
        spec = {"holderIdentity": "unknown-writer", "leaseTransitions": 4}
        annotations["test.celery-leader.io/raw"] = base64.b64encode(raw).decode()
    current = server.lease(NAMESPACE, name)
    obj = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": spec,
    }
    # through the validating path, as kubectl or another controller would write it
    decoded, _ = server.decode_lease(json.dumps(obj).encode(), None, NAMESPACE, name)
    if current is None:
        server.create(NAMESPACE, decoded, "kubectl")
    else:
        server.replace(NAMESPACE, name, decoded, "kubectl")


class TestKubernetesLock(LockContract):
    race_clients = 6
    lease_resolution = 1.0  # a Lease stores whole seconds, rounded up

    @pytest.fixture
    def backend_url(self, k8s_url: str) -> str:
        return k8s_url

    @pytest.fixture
    def write_raw(self, apiserver: LeaseAPIServer):
        return lambda name, raw: _write_raw(apiserver, name, raw)

    def test_create_then_get_round_trips_every_field(self, lock) -> None:
        """Overridden: a Lease stores whole seconds, so the suite's 1.5 s comes back as 2 s
        (rounded up, never down: DESIGN.md section 2). Every other field round-trips exactly."""
        rec = sample_record(preferred_holder="candidate-b", lease_duration=2.0)
        version = lock.create(rec, TIMEOUT)
        got = lock.get(TIMEOUT)
        assert isinstance(got, Versioned) and got.version == version
        assert got.record == rec and got.record.decode_error is None
        odd = sample_record(lease_duration=1.5)
        v2 = lock.update(odd, version, TIMEOUT)
        again = lock.get(TIMEOUT)
        assert again is not None and again.version == v2
        assert again.record == odd.evolve(lease_duration=2.0)

    def test_identical_records_still_get_new_versions(self, lock, apiserver: LeaseAPIServer) -> None:
        """Overridden: the real API server does not write a PUT that changes nothing, and
        answers with the unchanged resourceVersion. That is still compare-and-swap: the
        stored state is exactly what the writer asked for, and resourceVersions never come
        back (etcd revisions only grow), so a stale writer cannot slip in (no ABA)."""
        rec = sample_record()
        v1 = lock.create(rec, TIMEOUT)
        assert lock.update(rec, v1, TIMEOUT) == v1
        v2 = lock.update(rec.evolve(holder="candidate-b"), v1, TIMEOUT)
        v3 = lock.update(rec, v2, TIMEOUT)
        assert len({v1, v2, v3}) == 3, "writing the first record back must not bring its version back"
        with pytest.raises(Conflict):
            lock.update(rec.evolve(holder="candidate-c"), v1, TIMEOUT)

    def test_garbage_keeps_the_fencing_token(self, lock, write_raw, name) -> None:
        write_raw(name, b"\x00\xffnot json")
        got = lock.get(TIMEOUT)
        assert got is not None and got.record.decode_error and "leaseDurationSeconds" in got.record.decode_error
        # the token of a Lease we cannot read is still never lowered
        assert got.record.transitions == 4
