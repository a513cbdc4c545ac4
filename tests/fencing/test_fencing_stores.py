"""Every fenced store: equal and higher tokens write, a lower one is refused and changes nothing.

Also: two writers racing (released together by a barrier) always leave the higher token's
value, and inputs that are not tokens are refused with a one-line error before anything
is written.
"""

from __future__ import annotations

import threading

import pytest

from celery_leader.errors import InvalidTokenError, StaleTokenError
from tests.fencing.stores import fresh, open_store


def test_higher_and_equal_tokens_write_lower_is_refused(store):
    store.write(3, "a")  # absent: created
    assert store.read() == "a"
    store.write(3, "b")  # the same term writes again
    assert store.read() == "b"
    store.write(7, "c")  # a newer term
    assert store.read() == "c"
    with pytest.raises(StaleTokenError) as info:
        store.write(6, "stale")
    assert (info.value.token, info.value.seen) == (6, 7)
    assert "token 6 is below 7" in str(info.value)
    assert store.read() == "c"
    store.write(7, "d")
    assert store.read() == "d"


BAD_TOKENS = [None, "5", 5.0, True, -1, 2**63, object()]


def test_bad_tokens_are_refused_before_writing(store):
    store.write(1, "kept")
    for bad in BAD_TOKENS:
        with pytest.raises(InvalidTokenError) as info:
            store.write(bad, "bad")
        message = str(info.value)
        assert "\n" not in message and "fencing token" in message, message
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert store.read() == "kept"


def test_token_zero_and_leadership_objects_are_tokens(store):
    class Term:
        token = 4

    store.write(0, "zero")
    assert store.read() == "zero"
    store.write(Term(), "term")
    assert store.read() == "term"
    with pytest.raises(StaleTokenError):
        store.write(3, "stale")


@pytest.mark.parametrize("seeded", [False, True], ids=["create", "update"])
def test_racing_writers_leave_the_higher_token(store, seeded):
    """Tokens 5 and 6 released together by a barrier, four rounds, each on a fresh row/key/object.

    Unseeded, both race to create the resource; seeded (token 5 wrote it before), both
    race to update it. Whatever the interleaving, token 6 is written and its value stays.
    """
    for i in range(4):
        spec = fresh(store.spec, i)
        if store.kind.startswith("redis-"):
            store.client.delete(spec["key"], spec["key"] + ":fence")  # removed again below
        writers = {5: open_store(spec), 6: open_store(spec)}
        try:
            if seeded:
                writers[5].write(5, "seed")
            barrier = threading.Barrier(2)
            outcome: dict[int, object] = {}

            def write(token: int, writers=writers, barrier=barrier, outcome=outcome) -> None:
                barrier.wait(10)
                try:
                    writers[token].write(token, f"token-{token}")
                    outcome[token] = "written"
                except StaleTokenError as exc:
                    outcome[token] = exc

            threads = [threading.Thread(target=write, args=(token,)) for token in (5, 6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert outcome[6] == "written", (i, outcome)
            assert writers[6].read() == "token-6", (i, outcome)
            if outcome[5] != "written":
                assert isinstance(outcome[5], StaleTokenError) and outcome[5].seen == 6
        finally:
            if store.kind.startswith("redis-"):
                store.client.delete(spec["key"], spec["key"] + ":fence")
            for writer in writers.values():
                writer.close()
