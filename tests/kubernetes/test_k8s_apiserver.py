"""The in-test API server enforces the real API's rules (else the other tests prove little).

Requests go through the official client's ApiClient over a real socket.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from .conftest import NAMESPACE

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
GOOD_TIME = "2024-05-02T08:14:02.114602Z"


@pytest.fixture
def raw(backend):
    client = backend.api_client

    def call(method: str, path: str, body=None, *, content_type: str | None = None, query=(), stream=False):
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = client.param_serialize(
            method=method, resource_path=path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = client.call_api(*request, _request_timeout=5)
        if stream:
            return resp
        data = resp.read()
        return resp.status, (json.loads(data) if data else None), resp.headers

    return call


def lease(name="rules", rv=None, **spec):
    meta = {"name": name}
    if rv:
        meta["resourceVersion"] = rv
    base = {"holderIdentity": "a", "leaseDurationSeconds": 5, "renewTime": GOOD_TIME, "leaseTransitions": 0}
    base.update(spec)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": {k: v for k, v in base.items() if v is not None}}


def test_create_conflict_update_rules(raw) -> None:
    status, created, _ = raw("POST", LEASES, lease())  # no Content-Type: accepted
    assert status == 201
    rv1 = created["metadata"]["resourceVersion"]
    status, dup, _ = raw("POST", LEASES, lease())
    assert status == 409 and dup["reason"] == "AlreadyExists"
    status, updated, _ = raw("PUT", f"{LEASES}/rules", lease(rv=rv1, holderIdentity="b"))
    assert status == 200 and int(updated["metadata"]["resourceVersion"]) > int(rv1)
    status, stale, _ = raw("PUT", f"{LEASES}/rules", lease(rv=rv1, holderIdentity="c"))
    assert status == 409 and stale["reason"] == "Conflict"
    status, forced, _ = raw("PUT", f"{LEASES}/rules", lease(holderIdentity="d"))  # no resourceVersion
    assert status == 200 and forced["spec"]["holderIdentity"] == "d"
    status, missing, _ = raw("PUT", f"{LEASES}/absent", lease(name="absent", rv=rv1))
    assert status == 404 and missing["reason"] == "NotFound"
    status, _, _ = raw("GET", f"{LEASES}/absent")
    assert status == 404


@pytest.mark.parametrize(
    "spec, code",
    [
        ({"renewTime": "2024-05-02T08:14:02.114602"}, 400),  # no zone
        ({"renewTime": "2024-05-02T08:14:02.114Z"}, 400),  # three digits
        ({"renewTime": "2024-05-02T08:14:02Z"}, 400),  # no fraction
        ({"leaseDurationSeconds": 1.5}, 400),  # not an integer
        ({"leaseDurationSeconds": "5"}, 400),
        ({"leaseDurationSeconds": 0}, 422),
        ({"leaseDurationSeconds": -3}, 422),
        ({"leaseTransitions": -1}, 422),
        ({"preferredHolder": "b"}, 422),  # without strategy
    ],
)
def test_invalid_leases_are_refused(raw, spec, code) -> None:
    status, body, _ = raw("POST", LEASES, lease(**spec))
    assert status == code, body
    assert body["kind"] == "Status" and body["code"] == code


def test_invalid_name_and_media_type(raw) -> None:
    status, body, _ = raw("POST", LEASES, lease(name="Not_A_Name"))
    assert status == 422 and body["reason"] == "Invalid"
    status, _, _ = raw("POST", LEASES, json.dumps(lease(name="pb")), content_type="application/vnd.kubernetes.protobuf")
    assert status == 415


def test_times_are_normalised_to_utc_and_unknown_fields_dropped_with_a_warning(raw) -> None:
    status, body, headers = raw("POST", LEASES, lease(renewTime="2024-05-02T10:14:02.114602+02:00", newField=1))
    assert status == 201
    assert body["spec"]["renewTime"] == GOOD_TIME and "newField" not in body["spec"]
    assert "unknown field" in headers.get("Warning", "")


def test_noop_put_keeps_the_resource_version(raw) -> None:
    _, created, _ = raw("POST", LEASES, lease())
    rv = created["metadata"]["resourceVersion"]
    _, same, _ = raw("PUT", f"{LEASES}/rules", lease(rv=rv))
    assert same["metadata"]["resourceVersion"] == rv


def test_watch_streams_json_lines_and_410_for_old_versions(raw, apiserver) -> None:
    _, created, _ = raw("POST", LEASES, lease())
    rv = created["metadata"]["resourceVersion"]
    raw("PUT", f"{LEASES}/rules", lease(holderIdentity="b"))
    resp = raw("GET", LEASES, query=[("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "1")], stream=True)
    lines = [json.loads(line) for line in resp.response.read().splitlines() if line.strip()]
    assert [e["type"] for e in lines] == ["MODIFIED"]
    assert int(lines[0]["object"]["metadata"]["resourceVersion"]) > int(rv)
    apiserver.restart()
    resp = raw("GET", LEASES, query=[("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "1")], stream=True)
    events = [json.loads(line) for line in resp.response.read().splitlines() if line.strip()]
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_each_response_is_one_write(apiserver) -> None:
    """Header and body in one segment: read everything with a single recv right after the request."""
    with socket.create_connection(("127.0.0.1", apiserver.port)) as sock:
        sock.sendall(
            f"GET {LEASES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {apiserver.token}\r\n\r\n".encode()
        )
        time.sleep(0.2)
        data = sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    assert len(body) == length and json.loads(body)["kind"] == "LeaseList"
