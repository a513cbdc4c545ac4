"""An idle standby's read on S3: a GET of a presigned URL on the client's own connection
pool instead of a botocore call per poll, with the regular call behind it for anything
but a whole 200 answer. Counted, never timed; on both servers."""

from __future__ import annotations

import time

import pytest

from celery_leader.backends import s3 as s3_module
from celery_leader.backends.s3 import MAX_BODY, S3Backend
from celery_leader.testing.contract import sample_record
from tests.wakeups import count_calls

T = 5.0
#: the timeout of the counted reads: the backend keeps a botocore client per timeout class,
#: and the largest class (60 s) is the only one a read's remaining time cannot drop out of
#: under load (a 5 s read whose presigned GET took 0.1 s made its regular call on the 3 s
#: class's client, whose requests the test did not count)
READ_T = 120.0


@pytest.fixture
def pair(s3_server, prefix):
    leader, standby = S3Backend.from_url(s3_server.url(prefix)), S3Backend.from_url(s3_server.url(prefix))
    yield leader, standby
    leader.close()
    standby.close()


def test_reads_make_no_botocore_call_and_see_every_renewal(pair) -> None:
    leader_backend, standby = pair
    leader, lock = leader_backend.lock("beat"), standby.lock("beat")
    version = leader.create(sample_record(holder="leader"), T)
    calls = count_calls(standby, "call")
    presigns = count_calls(standby._client(s3_module._timeout_class(READ_T)), "generate_presigned_url")
    for i in range(6):
        got = lock.get(READ_T)
        assert got is not None and got.version == version and got.record.holder == "leader"
        version = leader.update(sample_record(holder="leader", renew_time=1_700_000_000.0 + i), version, T)
    released = leader.update(sample_record(holder=""), version, T)
    got = lock.get(READ_T)
    assert got is not None and got.version == released and got.record.holder == ""
    assert calls[0] == 0
    assert presigns[0] == 1  # one URL, made on the first read, for the next PRESIGN_REFRESH seconds


def test_a_missing_object_reads_as_none_and_is_no_refusal(pair) -> None:
    _, standby = pair
    lock = standby.lock("nothing-here")
    calls = count_calls(standby, "call")
    for _ in range(4):
        assert lock.get(T) is None
    assert calls[0] == 4  # the 404 goes to the regular call, which says "absent"
    assert standby.presigned_reads


def test_a_refused_url_falls_back_then_presigned_reads_stop(seaweed_server, prefix, monkeypatch) -> None:
    """A server or bucket policy that refuses presigned URLs: every read still answers
    (through the regular call), and after PRESIGN_REFUSALS refusals only the regular call is
    made. (SeaweedFS checks the signature of a presigned URL, as AWS does; moto does not.)"""
    leader_backend = S3Backend.from_url(seaweed_server.url(prefix))
    standby = S3Backend.from_url(seaweed_server.url(prefix))
    version = leader_backend.lock("beat").create(sample_record(holder="leader"), T)
    lock = standby.lock("beat")
    client = standby._client(s3_module._timeout_class(READ_T))
    real = client.generate_presigned_url

    def forged(*args, **kwargs):  # a URL whose signature the server refuses (403)
        return real(*args, **kwargs).replace("Signature=", "Signature=AAAA").replace(
            "X-Amz-Signature=", "X-Amz-Signature=0000")

    monkeypatch.setattr(client, "generate_presigned_url", forged)
    calls = count_calls(standby, "call")
    sends = count_calls(client._endpoint.http_session, "send")
    for i in range(s3_module.PRESIGN_REFUSALS + 2):
        got = lock.get(READ_T)
        assert got is not None and got.version == version and got.record.holder == "leader"
        assert calls[0] == i + 1
    assert not standby.presigned_reads
    # PRESIGN_REFUSALS refused presigned GETs, then one regular request per read
    assert sends[0] == s3_module.PRESIGN_REFUSALS + calls[0]
    leader_backend.close()
    standby.close()


def test_an_oversized_object_is_not_read(pair) -> None:
    leader_backend, standby = pair
    key = standby.lock("big").key
    big = b"{" + b" " * (MAX_BODY + 10) + b"}"
    leader_backend.call("put_object", time.monotonic() + T, Key=key, Body=big)
    calls = count_calls(standby, "call")
    got = standby.lock("big").get(T)
    assert got is not None and got.record.decode_error is not None and "too large" in got.record.decode_error
    assert calls[0] == 0
