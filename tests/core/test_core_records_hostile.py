"""Hostile records: whatever bytes a lock store holds, decoding yields a record or the
"unreadable" placeholder, never an exception; an election waits one lease and takes over.

Property-based (Hypothesis) over the shared JSON codec and the Kubernetes Lease codec;
the backends' own read paths are covered in their folders (tests/*/test_*_hostile.py).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_leader import Election
from celery_leader.backends.memory import MemoryBackend
from celery_leader.errors import RecordDecodeError
from celery_leader.record import (
    MAX_RECORD_BYTES,
    LeaderRecord,
    decode_or_placeholder,
    decode_record,
    encode_record,
    printable,
)

#: examples per property: each CI run draws new ones; ``CELERY_LEADER_SOAK=1`` draws ten times as many
EXAMPLES = 1000 if os.environ.get("CELERY_LEADER_SOAK") == "1" else 100

#: byte strings that escaped the decoder before (RecursionError, OverflowError, ...)
HOSTILE = [
    b"[" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"holderIdentity":"x","acquireTime":1' + b"0" * 400 + b"}",
    b'{"holderIdentity":"x","renewTime":1e400}',
    b'{"holderIdentity":"x","leaseDurationMilliSeconds":NaN}',
    b'{"holderIdentity":"x","leaderTransitions":Infinity}',
    b'{"holderIdentity":"x","leaderTransitions":-Infinity}',
    b'{"holderIdentity":"x","leaderTransitions":9223372036854775808}',
    b'{"holderIdentity":"x","acquireTime":9007199254740992}',
    b'{"holderIdentity":"x","leaseDurationMilliSeconds":9007199254740992}',
    b'{"holderIdentity":"x","leaderTransitions":"7"}',
    b'{"holderIdentity":["x"]}',
    b'{"holderIdentity":"x","preferredHolder":{}}',
    b'{"holderIdentity":"x","leaderTransitions":1e300}',
    b'{"holderIdentity":"x","leaderTransitions":' + b"9" * 5000 + b"}",
    b'{"holderIdentity":"' + b"x" * (MAX_RECORD_BYTES + 10) + b'"}',
    b"\xff\xfe\x00garbage",
    b'"\\ud800"',
    b"",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
record_keys = st.sampled_from(
    ["holderIdentity", "leaseDurationMilliSeconds", "acquireTime", "renewTime", "leaderTransitions", "preferredHolder", "x"]
)
record_like = st.dictionaries(record_keys, json_values | st.integers(min_value=-(2**70), max_value=2**70), max_size=7)


def _assert_record_or_placeholder(record: LeaderRecord) -> None:
    assert isinstance(record, LeaderRecord)
    if record.decode_error is None:
        assert 0 <= record.transitions < 2**63
        assert abs(record.renew_time) < 2**53 / 1000 and abs(record.acquire_time) < 2**53 / 1000
        assert 0 <= record.lease_duration < 2**53 / 1000
        assert isinstance(record.holder, str)
        encode_record(record)  # a decoded record can always be written back
    else:
        assert not record.is_free and record.holder == ""


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bytes_give_the_placeholder(raw: bytes) -> None:
    record = decode_or_placeholder(raw)
    assert record.decode_error, record
    with pytest.raises(RecordDecodeError):
        decode_record(raw)


def test_bounds_accept_the_largest_legal_values() -> None:
    doc = {"holderIdentity": "x", "leaderTransitions": 2**63 - 1, "acquireTime": 2**53 - 1, "renewTime": 2**53 - 1}
    record = decode_or_placeholder(json.dumps(doc).encode())
    assert record.decode_error is None and record.transitions == 2**63 - 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _assert_record_or_placeholder(decode_or_placeholder(raw))


@settings(max_examples=EXAMPLES, deadline=None)
@given(json_values | record_like)
def test_arbitrary_json_never_raises(doc: object) -> None:
    raw = json.dumps(doc, allow_nan=True).encode()
    _assert_record_or_placeholder(decode_or_placeholder(raw))


@settings(max_examples=EXAMPLES, deadline=None)
@given(record_like, st.integers(min_value=0, max_value=300))
def test_nested_or_huge_values_in_any_field(doc: dict, depth: int) -> None:
    doc = dict(doc)
    doc["holderIdentity"] = json.loads("[" * depth + "]" * depth) if depth else doc.get("holderIdentity", "")
    raw = json.dumps(doc).encode()
    _assert_record_or_placeholder(decode_or_placeholder(raw))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(json_values, st.dictionaries(st.text(max_size=20), json_values, max_size=8), record_like))
def test_kubernetes_lease_codec_never_raises(spec: object) -> None:
    kubernetes = pytest.importorskip("celery_leader.backends.kubernetes")
    for obj in ({"spec": spec}, spec, {"spec": spec, "metadata": {"annotations": spec}}):
        _assert_record_or_placeholder(kubernetes.lease_to_record(obj))


@pytest.mark.parametrize(
    "spec",
    [
        {"holderIdentity": "x", "leaseDurationSeconds": 10, "renewTime": "99999-01-01T00:00:00.000000Z"},
        {"holderIdentity": "x", "leaseDurationSeconds": 10, "renewTime": "2024-13-45T99:00:00Z"},
        {"holderIdentity": "x", "leaseDurationSeconds": 10 ** 400},
        {"holderIdentity": "x", "leaseDurationSeconds": 10, "leaseTransitions": 2**64},
        {"holderIdentity": "x", "leaseDurationSeconds": 10, "acquireTime": "0001-01-01T00:00:00.000000+99:59"},
        {"holderIdentity": "x", "leaseDurationSeconds": 2**53},
        {"holderIdentity": "x", "leaseDurationSeconds": 10, "leaseTransitions": 2**63},
    ],
)
def test_kubernetes_hostile_leases(spec: dict) -> None:
    kubernetes = pytest.importorskip("celery_leader.backends.kubernetes")
    record = kubernetes.lease_to_record({"spec": spec})
    _assert_record_or_placeholder(record)
    assert record.decode_error


def test_printable_escapes_terminal_and_log_controls() -> None:
    evil = "x\x1b[2J\x1b]0;pwned\x07\nINFO forged\x7f\x85\u2028\ud800"
    shown = printable(evil)
    assert shown.isprintable()
    for ch in "\x1b\x07\n\x7f\x85\u2028\ud800":
        assert ch not in shown
    assert printable("beat-host-123") == "beat-host-123"
    assert len(printable("y" * 10_000)) < 300


@pytest.mark.parametrize("raw", [HOSTILE[0], HOSTILE[2], HOSTILE[4]], ids=["deep", "huge-int", "nan"])
def test_an_election_takes_over_a_hostile_record_after_one_lease(raw: bytes) -> None:
    backend = MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")
    backend.lock("job").write_raw(raw)
    terms: list[int] = []
    election = Election(
        "job", backend=backend, identity="n1", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2,
        on_started_leading=lambda lead: terms.append(lead.token),
    )  # fmt: skip
    election.start()
    try:
        deadline = time.monotonic() + 10
        while not terms and time.monotonic() < deadline:
            time.sleep(0.02)
        assert terms and terms[0] >= 1
        got = backend.lock("job").get(1.0)
        assert got is not None and got.record.holder == "n1" and got.record.decode_error is None
    finally:
        election.stop()


@settings(max_examples=EXAMPLES // 10, deadline=None)
@given(
    holder=st.text(max_size=40),
    times=st.tuples(st.floats(0, 2**40), st.floats(0, 2**40), st.floats(0, 1e6)),
    token=st.integers(0, 2**62),
    preferred=st.text(max_size=10),
    extra=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
)
def test_renewed_is_evolve(holder: str, times: tuple[float, float, float], token: int, preferred: str, extra: dict) -> None:
    """The renewal's copy (no ``dataclasses.replace``) equals ``evolve``'s in every field and in its encoding."""
    acquire, renew, lease = times
    base = LeaderRecord(holder=holder, lease_duration=15.0, acquire_time=acquire, renew_time=1.0, transitions=token,
                        preferred_holder=preferred, extra=extra)  # fmt: skip
    fast, slow = base.renewed(renew, lease), base.evolve(renew_time=renew, lease_duration=lease)
    assert type(fast) is LeaderRecord and vars(fast) == vars(slow) and fast == slow and hash(fast) == hash(slow)
    assert encode_record(fast) == encode_record(slow)
    assert base.renew_time == 1.0 and base.lease_duration == 15.0  # the original is untouched
    with pytest.raises(AttributeError):
        fast.holder = "x"  # type: ignore[misc]  # still frozen


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    holder=st.text(max_size=40),
    times=st.tuples(st.floats(0, 2**40), st.floats(0, 2**40), st.floats(0, 1e6)),
    token=st.integers(0, 2**62),
    preferred=st.text(max_size=10),
)
def test_a_record_without_extra_keys_encodes_as_the_sorted_json_of_its_fields(
    holder: str, times: tuple[float, float, float], token: int, preferred: str
) -> None:
    """A record without extra keys (every renewal of a plain election) is written out
    directly; the bytes are exactly ``json.dumps`` of its fields with sorted keys, as every
    other record's (and as the Go seed reads them), whatever its strings hold."""
    acquire, renew, lease = times
    record = LeaderRecord(holder=holder, lease_duration=lease, acquire_time=acquire, renew_time=renew,
                          transitions=token, preferred_holder=preferred)  # fmt: skip
    doc = {
        "holderIdentity": holder,
        "leaseDurationMilliSeconds": int(math.ceil(round(lease * 1000, 6))),
        "acquireTime": int(round(acquire * 1000)),
        "renewTime": int(round(renew * 1000)),
        "leaderTransitions": token,
    }
    if preferred:
        doc["preferredHolder"] = preferred
    raw = encode_record(record)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert decode_record(raw) == record.evolve(
        lease_duration=doc["leaseDurationMilliSeconds"] / 1000,
        acquire_time=doc["acquireTime"] / 1000,
        renew_time=doc["renewTime"] / 1000,
    )
    # and with one extra key the general way gives the same fields around it
    extra = json.loads(encode_record(record.evolve(extra={"zz": 1})))
    assert extra == {**doc, "zz": 1}
