"""Elections over S3: a Go seed candidate's record, a lock object deleted by hand."""

from __future__ import annotations

import json
import threading
import time

import pytest

from celery_leader import Election
from celery_leader.backends.s3 import NONCE_KEY

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


def _election(url: str, identity: str, **kw) -> Election:
    return Election("beat", url=url, identity=identity, lease_duration=LEASE, renew_deadline=RENEW,
                    retry_period=RETRY, **kw)


def _go_record(holder: str, transitions: int, renew_ms: int) -> bytes:
    """Exactly what the Go seed's ``json.Marshal(le.Record)`` writes: no nonce."""
    return json.dumps({
        "holderIdentity": holder, "leaseDurationMilliSeconds": 1000, "acquireTime": 1_700_000_000_000,
        "renewTime": renew_ms, "leaderTransitions": transitions, "goOnlyField": "kept",
    }).encode()


def test_go_seed_record_is_respected_then_taken_over(s3_server, prefix) -> None:
    client = s3_server.client()
    key = f"{prefix}/beat.lock.json"
    stop_go = threading.Event()

    def go_candidate() -> None:
        # the Go seed renews by rewriting the object (its own unconditional put) every 0.25 s
        n = 0
        while not stop_go.is_set():
            n += 1
            client.put_object(Bucket=s3_server.bucket, Key=key, Body=_go_record("go-node", 5, 1_700_000_000_000 + n))
            stop_go.wait(0.25)

    go = threading.Thread(target=go_candidate, daemon=True)
    go.start()
    time.sleep(0.3)
    e = _election(s3_server.url(prefix), "py-node")
    try:
        e.start()
        assert not e.wait_until_leader(LEASE * 2), "took over from a live Go holder"
        assert e.leader == "go-node"
        stop_go.set()
        go.join(5)
        assert e.wait_until_leader(10), "did not take over once the Go holder stopped renewing"
        assert e.token == 6
        doc = json.loads(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
        assert doc["holderIdentity"] == "py-node" and doc["leaderTransitions"] == 6
        assert doc["leaseDurationMilliSeconds"] == 1000
        assert doc["goOnlyField"] == "kept" and NONCE_KEY in doc
    finally:
        stop_go.set()
        e.stop()


def test_object_deleted_by_hand_is_recreated_with_a_higher_token(s3_server, prefix) -> None:
    client = s3_server.client()
    key = f"{prefix}/beat.lock.json"
    url = s3_server.url(prefix)
    elections = [_election(url, f"node{i}") for i in range(3)]
    try:
        for e in elections:
            e.start()
        deadline = time.monotonic() + 10
        while not any(e.is_leader for e in elections) and time.monotonic() < deadline:
            time.sleep(0.02)
        leader = next(e for e in elections if e.is_leader)
        before = leader.token
        assert before is not None
        # the followers have seen the record (a candidate that never saw it cannot know its
        # token: docs/s3.md); waited for, not slept on: on a loaded machine reads come late
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(e._core.max_seen_transitions >= before for e in elections):
            time.sleep(0.02)
        assert all(e._core.max_seen_transitions >= before for e in elections)
        client.delete_object(Bucket=s3_server.bucket, Key=key)
        # the leader's next renewal fails (If-Match on a missing object), then someone
        # re-creates the object: the Go seed's lock wedges here for good
        deadline = time.monotonic() + 10
        token = None
        overlap = False
        while time.monotonic() < deadline:
            leaders = [e for e in elections if e.is_leader]
            overlap = overlap or len(leaders) > 1
            if len(leaders) == 1 and leaders[0].token is not None and leaders[0].token > before:
                token = leaders[0].token
                break
            time.sleep(0.005)
        assert token is not None, "nobody re-created the deleted lock object"
        doc = json.loads(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
        assert doc["leaderTransitions"] == token > before
        assert not overlap, "two leaders while the deleted lock's lease was still running"
    finally:
        for e in elections:
            e.stop()


@pytest.mark.parametrize("garbage", [b"\x00\x01 not a record"])
def test_garbage_object_is_overwritten_after_one_lease(s3_server, prefix, garbage) -> None:
    client = s3_server.client()
    key = f"{prefix}/beat.lock.json"
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=garbage)
    e = _election(s3_server.url(prefix), "py-node")
    try:
        started = time.monotonic()
        e.start()
        assert e.wait_until_leader(10)
        assert time.monotonic() - started >= LEASE * 0.9  # held by "unknown" for one lease first
        doc = json.loads(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
        assert doc["holderIdentity"] == "py-node"
    finally:
        e.stop()


def test_async_elections_share_one_backend_and_hand_over(moto_server, prefix) -> None:
    """Two asyncio candidates on one S3Backend (one set of clients): one leads, a release hands over."""
    import asyncio

    from celery_leader.aio import AsyncElection
    from celery_leader.backends.s3 import S3Backend

    async def scenario() -> tuple[int | None, int | None]:
        backend = S3Backend.from_url(moto_server.url(prefix))
        a = AsyncElection("beat", backend=backend, identity="a", lease_duration=LEASE, renew_deadline=RENEW,
                          retry_period=RETRY)
        b = AsyncElection("beat", backend=backend, identity="b", lease_duration=LEASE, renew_deadline=RENEW,
                          retry_period=RETRY)
        await a.start()
        assert await a.wait_until_leader(10)
        await b.start()
        assert not await b.wait_until_leader(LEASE * 1.5)  # a keeps renewing
        first = a.token
        await a.stop()  # releases
        assert await b.wait_until_leader(5)
        second = b.token
        await b.stop()
        backend.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert first is not None and second is not None and second > first
