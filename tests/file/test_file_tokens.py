"""Fencing tokens on file:// survive a deleted or garbled lease file (issue 14, item 8).

The highest token is kept in ``NAME.lock``; a vanished lease file reads as held at that
token, so the holder's next renewal fails (it notices) while everybody else waits a lease.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from celery_leader.backends.file import ABSENT, VANISHED_HOLDER, FileBackend
from celery_leader.election import Election
from celery_leader.lock import BackendUnavailable, Conflict
from celery_leader.record import LeaderRecord

TIMING = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
T = 2.0


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Work:
    """Each term's work, as the work saw it: (who, token, start, end)."""

    def __init__(self) -> None:
        self.items: list[list] = []
        self.guard = threading.Lock()

    def of(self, who: str):
        def work(lead) -> None:
            item = [who, lead.token, time.monotonic(), None]
            with self.guard:
                self.items.append(item)
            lead.lost.wait()
            item[3] = time.monotonic()

        return work

    def overlaps(self) -> list:
        items = sorted(self.items, key=lambda i: i[2])
        return [
            (a, b) for i, a in enumerate(items) for b in items[i + 1 :] if b[2] < (a[3] if a[3] is not None else float("inf"))
        ]


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_damaged_lease_file_never_lets_a_lower_token_in_nor_two_leaders(lock_dir: Path, damage: str) -> None:
    url = f"file://{lock_dir}"
    seed = FileBackend(lock_dir).lock("job")
    seed.create(LeaderRecord(holder="", lease_duration=1.0, transitions=6), T)  # six terms went before
    work = Work()
    a = Election("job", url=url, identity="a", on_started_leading=work.of("a"), **TIMING).start()
    b = None
    try:
        assert a.wait_until_leader(10) and a.token == 7
        if damage == "deleted":
            (lock_dir / "job.lease.json").unlink()
        else:
            seed.write_raw(b"\x00garbage, not a record")
        b = Election("job", url=url, identity="b", on_started_leading=work.of("b"), **TIMING).start()
        # the holder notices (its renewal's compare-and-swap fails) and somebody leads again
        assert _wait(lambda: len(work.items) >= 2, 15), work.items
        later = work.items[1]
        assert later[1] > 7, f"token {later[1]} was issued after token 7"
        assert work.items[0][3] is not None and work.items[0][3] <= later[2], "two terms worked at once"
        assert not work.overlaps()
    finally:
        a.stop()
        if b is not None:
            b.stop()
        seed.close()


def test_the_fence_is_kept_in_the_lock_file_and_refuses_lower_tokens(backend: FileBackend, lock_dir: Path) -> None:
    lock = backend.lock("job")
    rec = LeaderRecord(holder="a", lease_duration=1.0, transitions=7)
    v7 = lock.create(rec, T)
    assert b'"leaderTransitions": 7' in (lock_dir / "job.lock").read_bytes()
    # a hand edit with a lower token reads at the fence, and writing below it is refused
    lock.write_raw(b'{"holderIdentity": "x", "leaseDurationMilliSeconds": 1000, "leaderTransitions": 2}')
    got = lock.get(T)
    assert got is not None and got.record.transitions == 7
    with pytest.raises(BackendUnavailable, match="tokens never go backwards"):
        lock.update(rec.evolve(holder="y", transitions=3), got.version, T)
    # deleted: held at the fence (absent:7); taken only strictly above it
    (lock_dir / "job.lease.json").unlink()
    with pytest.raises(Conflict):
        lock.update(rec, v7, T)
    gone = lock.get(T)
    assert gone is not None and gone.record.holder == VANISHED_HOLDER and gone.version == f"{ABSENT}7"
    with pytest.raises(Conflict):
        lock.create(rec.evolve(transitions=1), T)
    with pytest.raises(BackendUnavailable):
        lock.update(rec.evolve(holder="b", transitions=7), gone.version, T)
    lock.update(rec.evolve(holder="b", transitions=8), gone.version, T)
    assert lock.get(T).record.transitions == 8


def test_a_lock_file_from_before_the_fence_still_works(backend: FileBackend, lock_dir: Path) -> None:
    (lock_dir / "job.lock").write_bytes(b"")  # as older versions left it
    lock = backend.lock("job")
    assert lock.get(T) is None
    lock.create(LeaderRecord(holder="a", transitions=1), T)
    (lock_dir / "job.lock").write_bytes(b"not json")  # garbled fence: the lease file's token still counts
    assert lock.get(T).record.transitions == 1
