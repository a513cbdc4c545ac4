"""Lock-level checks that several backends' tests run the same way, each with its own way
of writing behind the backend's back (the callables)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from celery_leader.lock import BackendUnavailable, Lock
from celery_leader.testing import sample_record

T = 5.0


def close_ends_a_waiting_watch(lock: Lock) -> None:
    """``close()`` wakes a thread waiting in ``wait_for_change`` (30 s) at once."""
    version = lock.create(sample_record(), T)
    done = threading.Event()

    def wait() -> None:
        lock.wait_for_change(version, 30.0)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set()
    lock.close()
    assert done.wait(5.0), "close() left the watch waiting"


def tokens_below_the_fence_are_refused(lock: Lock, write: Callable[[bytes], object], delete: Callable[[], object]) -> None:
    """``write(raw)`` puts bytes in the lock entry, ``delete()`` deletes it (the fence stays).

    A foreign writer (a hand edit) puts the token back: reads lift it to the fence and a
    write below it is refused; a vanished lock entry is retaken only above the fence.
    """
    version = lock.create(sample_record(transitions=7), T)
    write(b'{"holderIdentity":"x","leaderTransitions":2}')
    got = lock.get(T)
    assert got is not None and got.record.transitions == 7 and got.version != version
    with pytest.raises(BackendUnavailable, match="never go backwards"):
        lock.update(sample_record(transitions=3), got.version, T)
    lock.update(sample_record(transitions=8), got.version, T)
    delete()
    gone = lock.get(T)
    assert gone is not None and gone.record.transitions == 8 and not gone.record.is_free
    with pytest.raises(BackendUnavailable):
        lock.update(sample_record(transitions=8), gone.version, T)
    lock.update(sample_record(transitions=9), gone.version, T)
