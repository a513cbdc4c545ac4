"""ChangeNotifier (Redis pub/sub, PostgreSQL LISTEN): a standby's wait reads only when it must
(issue 21), and never misses a change because it skipped a read.

A fake connection stands in for the server: the test delivers announcements and drops the
connection by hand, and counts the reads each wait makes.
"""

from __future__ import annotations

import threading
import time

import pytest

from celery_leader.backends.notify import ChangeNotifier

LONG = 30.0


class Fake(ChangeNotifier):
    label = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.drop = threading.Event()

    def _listen(self) -> None:
        self.drop.clear()
        self._connected()
        while not self._stopping.is_set() and not self.drop.is_set():
            self._stopping.wait(0.01)
        if self.drop.is_set():
            raise ConnectionError("dropped by the test")


class Store:
    """The 'server' side: a version per name, and the reads made of it."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.reads = 0

    def read(self, _left: float) -> str:
        self.reads += 1
        return self.version


@pytest.fixture
def notifier():
    n = Fake()
    before = n._generation
    n.ensure_running()
    assert n.ready.wait(5)
    # _connected() sets ``ready`` and then wakes the waiters (a new generation): a wait that
    # starts in between would see that wake-up as a reconnect and read once more
    assert until(lambda: n._generation > before)
    yield n
    n.stop()


def until(condition, timeout: float = LONG) -> bool:
    """Poll for a condition the other thread brings about (no bet on how soon it runs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_in_thread(n: Fake, store: Store, version: str, lock: object) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        n.wait("job", store.read, version, LONG, waiter=lock)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def waiting(n: Fake, name: str = "job") -> bool:
    """A wait in another thread has subscribed to ``name`` on the current connection: from
    now on an announcement of it is noted (one sent before is not, as from a real server)."""
    return until(lambda: bool(n._counts.get(name)) and n._tracked.get(name) == n._generation)


def announce(n: Fake, store: Store, version: str) -> None:
    store.version = version
    n._deliver(f"{version} job")


def test_a_second_wait_on_the_same_connection_needs_no_read(notifier: Fake) -> None:
    store, lock = Store("v1"), object()
    done = wait_in_thread(notifier, store, "v1", lock)
    assert not done.wait(0.2)
    announce(notifier, store, "v2")
    assert done.wait(LONG)
    assert store.reads == 1  # the first wait reads once: it could not know what came before
    store.read(0)  # the election reads the new version ...
    store.reads = 0
    done = wait_in_thread(notifier, store, "v2", lock)  # ... and waits again
    assert not done.wait(0.2)
    assert store.reads == 0  # nothing announced since: no read
    announce(notifier, store, "v3")
    assert done.wait(LONG)


def test_a_change_announced_between_two_waits_ends_the_next_wait(notifier: Fake) -> None:
    store, lock = Store("v1"), object()
    done = wait_in_thread(notifier, store, "v1", lock)
    announce(notifier, store, "v2")
    assert done.wait(LONG)
    announce(notifier, store, "v3")  # after the election's read of v2, before its next wait
    done = wait_in_thread(notifier, store, "v2", lock)
    assert done.wait(LONG)  # at once: v3 was announced while nobody waited


def test_after_a_reconnect_the_next_wait_reads_again(notifier: Fake) -> None:
    store, lock = Store("v1"), object()
    done = wait_in_thread(notifier, store, "v1", lock)
    announce(notifier, store, "v2")
    assert done.wait(LONG)
    # the connection drops; a write while it is down is never announced
    generation = notifier._generation
    notifier.drop.set()
    while notifier._generation == generation or not notifier.ready.is_set():
        notifier.ready.wait(0.01)
    store.version = "v3"
    done = wait_in_thread(notifier, store, "v2", lock)
    assert done.wait(LONG)  # the wait read again and saw v3
    assert store.reads >= 2


def test_another_lock_of_the_same_name_does_not_inherit_the_trust(notifier: Fake) -> None:
    store, first, second = Store("v1"), object(), object()
    done = wait_in_thread(notifier, store, "v1", first)
    announce(notifier, store, "v2")
    assert done.wait(LONG)
    store.version = "v3"  # a write whose announcement has not arrived yet
    store.reads = 0
    done = wait_in_thread(notifier, store, "v2", second)  # a lock that never waited before
    assert done.wait(LONG)  # it read, and saw v3
    assert store.reads == 1


def test_an_older_announcement_than_the_read_version_costs_a_read_not_a_spin(notifier: Fake) -> None:
    store, lock = Store("v1"), object()
    done = wait_in_thread(notifier, store, "v1", lock)
    assert waiting(notifier)  # (else v2's announcement goes unnoted and there is nothing late to show)
    announce(notifier, store, "v2")
    assert done.wait(LONG)
    store.version = "v3"  # the election read v3; its announcement is late
    store.reads = 0
    done = wait_in_thread(notifier, store, "v3", lock)
    # latest announced (v2) differs: one read, then a real wait (not a spin of reads)
    assert until(lambda: store.reads >= 1), "the wait never read"
    assert not done.wait(0.3)
    assert store.reads == 1
    announce(notifier, store, "v3")  # the late announcement of what it already has
    assert not done.wait(0.2)
    announce(notifier, store, "v4")
    assert done.wait(LONG)
