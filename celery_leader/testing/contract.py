"""The backend contract suite (import it as ``celery_leader.testing.LockContract``).

In the spirit of keyring's ``BackendBasicTests``: a backend's test module subclasses
:class:`LockContract` and provides pytest fixtures:

``backend_url``
    the lock URL to test (``open_backend(url)`` must work). The suite's own
    ``new_backend`` opens a new backend (a new client: races between clients are what
    matter) from it for every lock, and ``make_lock`` (``callable(name) -> Lock``)
    closes every lock and backend it opened. Override ``new_backend`` (a
    ``callable() -> Backend``) when a backend needs more than its URL.
``write_raw``
    ``callable(name, data: bytes)``: stores ``data`` as the lock object's content,
    bypassing the codec (garbage and foreign records).
``stalled_lock``
    ``callable(name) -> contextmanager yielding a Lock`` whose backend does not answer
    while the context is open (a held file lock, a paused server, a black-holed port).

Class attributes describe what a backend legitimately does differently:
``lease_resolution`` (the step in which it stores lease durations), ``race_clients`` and
``race_rounds``. Every test uses short timeouts and generous waits, so it is stable on a
loaded machine.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from ..lock import Backend, BackendUnavailable, Conflict, Lock, Versioned
from ..record import LeaderRecord, encode_record
from ..registry import open_backend

__all__ = ["LockContract", "sample_record", "race"]

TIMEOUT = 5.0


def sample_record(holder: str = "candidate-a", transitions: int = 3, **kw: object) -> LeaderRecord:
    base = dict(
        holder=holder,
        lease_duration=1.5,
        acquire_time=1_700_000_000.123,
        renew_time=1_700_000_010.456,
        transitions=transitions,
    )
    base.update(kw)
    return LeaderRecord(**base)  # type: ignore[arg-type]


def race(n: int, action) -> tuple[list[object], list[BaseException]]:
    """Run ``action(i)`` in ``n`` threads released together; return (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            out = action(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            with guard:
                errors.append(exc)
        else:
            with guard:
                results.append(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


#: contents that once escaped decoders (RecursionError, OverflowError, NaN) or are too big
HOSTILE = {
    "deep-nesting": b"[" * 5000,
    "huge-number": b'{"holderIdentity":"x","acquireTime":1' + b"0" * 400 + b"}",
    "nan": b'{"holderIdentity":"x","leaseDurationMilliSeconds":NaN}',
    "infinite-token": b'{"holderIdentity":"x","leaderTransitions":1e400}',
    "token-too-big": b'{"holderIdentity":"x","leaderTransitions":9223372036854775808}',
    "over-64KiB": b'{"holderIdentity":"' + b"x" * (65 * 1024) + b'"}',
}


def _json_bytes(st: Any) -> Any:
    """Hypothesis strategy: JSON objects shaped like records, with hostile values."""
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=10,
    )
    keys = st.sampled_from(
        ["holderIdentity", "leaseDurationMilliSeconds", "acquireTime", "renewTime", "leaderTransitions", "preferredHolder"]
    )
    return st.dictionaries(keys, values | st.integers(min_value=-(2**70), max_value=2**70), max_size=6).map(
        lambda doc: json.dumps(doc).encode()
    )


class LockContract:
    """Behaviour every :class:`~celery_leader.lock.Lock` must show."""

    #: how many concurrent clients race in the race tests
    race_clients = 8
    #: how many rounds each race test runs
    race_rounds = 5
    #: the step in which stored lease durations come back, rounded up (seconds): the JSON
    #: record keeps milliseconds, a Kubernetes Lease whole seconds
    lease_resolution = 0.001
    #: how many arbitrary byte strings the property test stores and reads back
    hostile_examples = 20
    #: racers may all lose a round (each ``Conflict``), never two win: consensus writers
    #: (CASPaxos) whose accepts each reached a minority can each see another's half-written
    #: value and lose to it. Safety (at most one winner) is asserted either way
    race_all_may_lose = False

    @pytest.fixture
    def name(self) -> str:
        return "contract-" + uuid.uuid4().hex[:12]

    @pytest.fixture
    def new_backend(self, backend_url: str) -> Callable[[], Backend]:
        """``callable() -> Backend``: a new backend (its own client) for ``backend_url``."""
        return lambda: open_backend(backend_url)

    @pytest.fixture
    def make_lock(self, new_backend: Callable[[], Backend]) -> Iterator[Callable[[str], Lock]]:
        """``callable(name) -> Lock`` through a new backend each call; all closed afterwards."""
        opened: list[tuple[Backend, Lock]] = []

        def make(name: str) -> Lock:
            backend = new_backend()
            lock = backend.lock(name)
            opened.append((backend, lock))
            return lock

        yield make
        for backend, lock in opened:
            lock.close()
            backend.close()

    @pytest.fixture
    def lock(self, make_lock, name) -> Lock:
        return make_lock(name)

    # --- reading and creating ---

    def test_get_absent_is_none(self, lock: Lock) -> None:
        assert lock.get(TIMEOUT) is None

    def test_create_then_get_round_trips_every_field(self, lock: Lock) -> None:
        rec = sample_record(preferred_holder="candidate-b")
        version = lock.create(rec, TIMEOUT)
        assert isinstance(version, str) and version
        got = lock.get(TIMEOUT)
        assert isinstance(got, Versioned)
        assert got.version == version
        assert got.record == rec
        assert got.record.decode_error is None

    def test_lease_duration_keeps_milliseconds(self, lock: Lock) -> None:
        lock.create(sample_record(lease_duration=0.6), TIMEOUT)
        got = lock.get(TIMEOUT)
        assert got is not None
        assert got.record.lease_duration >= 0.6
        assert got.record.lease_duration < 0.6 + self.lease_resolution

    def test_create_when_present_conflicts(self, lock: Lock) -> None:
        lock.create(sample_record(), TIMEOUT)
        with pytest.raises(Conflict):
            lock.create(sample_record(holder="candidate-b"), TIMEOUT)
        got = lock.get(TIMEOUT)
        assert got is not None and got.record.holder == "candidate-a"

    # --- compare-and-swap ---

    def test_update_with_current_version(self, lock: Lock) -> None:
        v1 = lock.create(sample_record(), TIMEOUT)
        v2 = lock.update(sample_record(holder="candidate-b", transitions=4), v1, TIMEOUT)
        assert v2 != v1
        got = lock.get(TIMEOUT)
        assert got is not None and got.version == v2
        assert got.record.holder == "candidate-b" and got.record.transitions == 4

    def test_identical_records_still_get_new_versions(self, lock: Lock) -> None:
        rec = sample_record()
        v1 = lock.create(rec, TIMEOUT)
        v2 = lock.update(rec, v1, TIMEOUT)
        assert v2 != v1
        with pytest.raises(Conflict):
            lock.update(rec, v1, TIMEOUT)

    def test_update_with_stale_version_conflicts(self, lock: Lock) -> None:
        v1 = lock.create(sample_record(), TIMEOUT)
        lock.update(sample_record(holder="candidate-b"), v1, TIMEOUT)
        with pytest.raises(Conflict):
            lock.update(sample_record(holder="candidate-c"), v1, TIMEOUT)
        got = lock.get(TIMEOUT)
        assert got is not None and got.record.holder == "candidate-b"

    def test_update_of_absent_object_conflicts(self, make_lock, name) -> None:
        other = make_lock(name)
        v1 = other.create(sample_record(), TIMEOUT)
        with pytest.raises(Conflict):
            make_lock(name + "-absent").update(sample_record(), v1, TIMEOUT)

    def test_create_race_has_exactly_one_winner(self, make_lock, name) -> None:
        for round_ in range(self.race_rounds):
            lock_name = f"{name}-c{round_}"
            locks = [make_lock(lock_name) for _ in range(self.race_clients)]
            results, errors = race(
                self.race_clients,
                lambda i, locks=locks: locks[i].create(sample_record(holder=f"c{i}"), TIMEOUT),
            )
            if not results and self.race_all_may_lose:
                assert errors and all(isinstance(e, Conflict) for e in errors), errors
                continue
            assert len(results) == 1, (results, errors)
            assert all(isinstance(e, Conflict) for e in errors), errors
            got = locks[0].get(TIMEOUT)
            assert got is not None and got.version == results[0]

    def test_update_race_has_exactly_one_winner(self, make_lock, name) -> None:
        locks = [make_lock(name) for _ in range(self.race_clients)]
        version = locks[0].create(sample_record(transitions=0), TIMEOUT)
        for round_ in range(1, self.race_rounds + 1):
            expected = version
            results, errors = race(
                self.race_clients,
                lambda i, r=round_, v=expected: (i, locks[i].update(sample_record(holder=f"c{i}", transitions=r), v, TIMEOUT)),
            )
            if not results and self.race_all_may_lose:
                assert errors and all(isinstance(e, Conflict) for e in errors), errors
                got = locks[0].get(TIMEOUT)  # what the members hold now: the old record or one racer's
                assert got is not None and got.record.transitions in (round_ - 1, round_), got
                version = got.version
                continue
            assert len(results) == 1, (results, errors)
            assert all(isinstance(e, Conflict) for e in errors), errors
            winner, version = cast(tuple[int, str], results[0])
            got = locks[0].get(TIMEOUT)
            assert got is not None and got.version == version
            assert got.record.holder == f"c{winner}" and got.record.transitions == round_

    # --- foreign and broken content ---

    def test_unknown_keys_are_preserved(self, lock: Lock, write_raw, name) -> None:
        raw = (
            b'{"holderIdentity":"go-candidate","leaseDurationMilliSeconds":15000,'
            b'"acquireTime":1700000000000,"renewTime":1700000001000,"leaderTransitions":7,'
            b'"someFutureField":{"nested":[1,2,3]}}'
        )
        write_raw(name, raw)
        got = lock.get(TIMEOUT)
        assert got is not None
        assert got.record.holder == "go-candidate"
        assert got.record.lease_duration == 15.0
        assert got.record.transitions == 7
        assert got.record.extra.get("someFutureField") == {"nested": [1, 2, 3]}
        lock.update(got.record.evolve(holder="py-candidate", transitions=8), got.version, TIMEOUT)
        again = lock.get(TIMEOUT)
        assert again is not None
        assert again.record.holder == "py-candidate"
        assert again.record.extra.get("someFutureField") == {"nested": [1, 2, 3]}

    @pytest.mark.parametrize(
        "garbage",
        [b"\x00\xffnot json", b'{"holderIdentity": "trunc', b"[1, 2, 3]", b'{"holderIdentity": 42}'],
        ids=["binary", "truncated", "not-an-object", "wrong-type"],
    )
    def test_garbage_is_reported_not_raised_and_can_be_replaced(self, lock: Lock, write_raw, name, garbage) -> None:
        write_raw(name, garbage)
        got = lock.get(TIMEOUT)
        assert got is not None
        assert got.record.decode_error, "undecodable content must be flagged"
        assert not got.record.is_free
        lock.update(sample_record(transitions=9), got.version, TIMEOUT)
        fixed = lock.get(TIMEOUT)
        assert fixed is not None and fixed.record.decode_error is None
        assert fixed.record.transitions == 9

    @pytest.mark.parametrize("garbage", list(HOSTILE.values()), ids=list(HOSTILE))
    def test_hostile_content_is_the_placeholder_and_can_be_replaced(self, lock: Lock, write_raw, name, garbage) -> None:
        """Deep nesting, huge or non-finite numbers, oversized content: never an exception."""
        try:
            write_raw(name, garbage)
        except Exception as exc:  # noqa: BLE001 - a store that refuses the bytes is fine too
            pytest.skip(f"this backend cannot store these bytes: {type(exc).__name__}")
        got = lock.get(TIMEOUT)
        assert got is not None and got.record.decode_error and not got.record.is_free
        lock.update(sample_record(transitions=max(9, got.record.transitions + 1)), got.version, TIMEOUT)
        fixed = lock.get(TIMEOUT)
        assert fixed is not None and fixed.record.decode_error is None

    def test_arbitrary_bytes_read_as_a_record_or_the_placeholder(self, lock: Lock, write_raw, name) -> None:
        """Property-based (Hypothesis, when installed): whatever is stored, ``get`` never raises."""
        hypothesis = pytest.importorskip("hypothesis")
        from hypothesis import strategies as st

        @hypothesis.settings(
            max_examples=self.hostile_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(st.one_of(st.binary(max_size=300), _json_bytes(st)))
        def check(raw: bytes) -> None:
            try:
                write_raw(name, raw)
            except Exception:  # noqa: BLE001 - bytes the store itself refuses are not read back
                return
            got = lock.get(TIMEOUT)
            assert got is not None and isinstance(got.record, LeaderRecord)
            if got.record.decode_error is None:
                encode_record(got.record)

        check()

    def test_garbage_replacement_is_still_compare_and_swap(self, lock: Lock, write_raw, name) -> None:
        write_raw(name, b"garbage-1")
        got = lock.get(TIMEOUT)
        assert got is not None
        write_raw(name, b"garbage-2")
        with pytest.raises(Conflict):
            lock.update(sample_record(), got.version, TIMEOUT)

    # --- time ---

    def test_calls_honour_their_timeout_when_backend_stalls(self, stalled_lock, name) -> None:
        with stalled_lock(name) as lock:
            for call in (
                lambda: lock.get(0.5),
                lambda: lock.create(sample_record(), 0.5),
                lambda: lock.update(sample_record(), "0", 0.5),
            ):
                started = time.monotonic()
                with pytest.raises((BackendUnavailable, Conflict)):
                    call()
                # generous: the contract is "returns or raises within the timeout"
                assert time.monotonic() - started < 3.0

    def test_wait_for_change_returns_on_change(self, make_lock, name) -> None:
        watcher, writer = make_lock(name), make_lock(name)
        version = writer.create(sample_record(), TIMEOUT)
        if not type(watcher).capabilities.watch:
            started = time.monotonic()
            watcher.wait_for_change(version, 0.3)
            assert time.monotonic() - started >= 0.25
            return
        woke = threading.Event()

        def wait() -> None:
            watcher.wait_for_change(version, 20.0)
            woke.set()

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        time.sleep(0.3)
        assert not woke.is_set(), "wait_for_change returned without a change"
        writer.update(sample_record(holder="candidate-b"), version, TIMEOUT)
        assert woke.wait(10.0), "wait_for_change did not notice the update"

    def test_wait_for_change_returns_at_once_if_already_changed(self, make_lock, name) -> None:
        lock = make_lock(name)
        v1 = lock.create(sample_record(), TIMEOUT)
        lock.update(sample_record(holder="candidate-b"), v1, TIMEOUT)
        if not type(lock).capabilities.watch:
            return
        started = time.monotonic()
        lock.wait_for_change(v1, 10.0)
        assert time.monotonic() - started < 5.0

    def test_a_hint_is_a_record_a_writer_stored(self, make_lock, name) -> None:
        """``wait_for_change_hinted`` returns ``None`` (the default), or the record a change
        notification carried: one of the writes made while it waited, never the version it
        waited from, never something nobody wrote."""
        watcher, writer = make_lock(name), make_lock(name)
        version = writer.create(sample_record(holder="leader"), TIMEOUT)
        assert watcher.get(TIMEOUT) is not None
        if not type(watcher).capabilities.watch:
            return
        written: dict[str, LeaderRecord] = {}
        got: list[Versioned | None] = []
        t = threading.Thread(target=lambda: got.append(watcher.wait_for_change_hinted(version, 20.0)), daemon=True)
        t.start()
        current = version
        for n in range(10):  # renewals, until the wait has ended on one
            if not t.is_alive():
                break
            record = sample_record(holder="leader", renew_time=1_700_000_500.0 + n)
            current = writer.update(record, current, TIMEOUT)
            written[current] = record
            t.join(0.2)
        t.join(20.0)
        assert got, "wait_for_change_hinted did not return"
        hint = got[0]
        if hint is None:
            return
        assert hint.version != version and hint.version in written, (hint.version, list(written))
        assert hint.record.holder == "leader" and hint.record.renew_time == written[hint.version].renew_time

    def test_wait_for_change_times_out_without_change(self, lock: Lock) -> None:
        version = lock.create(sample_record(), TIMEOUT)
        started = time.monotonic()
        lock.wait_for_change(version, 0.5)
        elapsed = time.monotonic() - started
        assert elapsed >= 0.4
        assert elapsed < 5.0

    # --- housekeeping ---

    def test_close_is_idempotent(self, lock: Lock) -> None:
        lock.create(sample_record(), TIMEOUT)
        lock.close()
        lock.close()

    def test_locks_with_different_names_are_independent(self, make_lock, name) -> None:
        a, b = make_lock(name + "-a"), make_lock(name + "-b")
        a.create(sample_record(holder="a"), TIMEOUT)
        assert b.get(TIMEOUT) is None
        b.create(sample_record(holder="b"), TIMEOUT)
        got_a, got_b = a.get(TIMEOUT), b.get(TIMEOUT)
        assert got_a is not None and got_a.record.holder == "a"
        assert got_b is not None and got_b.record.holder == "b"

    def test_encoded_record_size_is_small(self) -> None:
        # a record is one small object: backends may rely on that
        assert len(encode_record(sample_record())) < 512
