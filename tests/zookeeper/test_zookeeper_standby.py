"""An idle standby on ZooKeeper reads once per renewal of the leader (its election's get,
which sets the data watch in the same round trip), not twice: its wait trusts that read
while the watch has not fired and the session has not changed. Counted, never timed."""

from __future__ import annotations

import os
import threading

import pytest

from celery_leader.testing import sample_record
from tests.elections import wait_for
from tests.wakeups import count_calls

from .conftest import ZooKeeper

T = 5.0
#: long enough never to end a wait in these tests: a wait that returns was woken by the watch
LONG = 60.0


def _wait_in_thread(lock, version) -> threading.Event:
    done = threading.Event()
    threading.Thread(target=lambda: (lock.wait_for_change(version, LONG), done.set()), daemon=True).start()
    return done


def test_a_standby_wait_needs_no_read_after_its_get(zk_server: ZooKeeper, path: str, open_backend) -> None:
    url = zk_server.url(path)
    leader, standby = open_backend(url).lock("s"), open_backend(url).lock("s")
    version = leader.create(sample_record(holder="leader"), T)
    assert standby.get(T) is not None  # connects: the session's CONNECTED event wakes its locks once
    assert wait_for(lambda: standby._generation > 0)
    for i in range(6):
        got = standby.get(T)  # the engine's read; it sets the watch
        assert got is not None and got.version == version
        renewed = sample_record(holder="leader", renew_time=1_700_000_100.0 + i)
        if i % 2:
            version = leader.update(renewed, version, T)  # before the wait: the watch has fired
            standby.wait_for_change(got.version, LONG)
        else:
            done = _wait_in_thread(standby, got.version)  # during the wait: the watch wakes it
            version = leader.update(renewed, version, T)
            assert done.wait(20), "the renewal did not end the standby's wait"
    assert standby.wait_reads == 0
    # a release is seen through the watch as well
    got = standby.get(T)
    assert got is not None
    done = _wait_in_thread(standby, got.version)
    leader.update(sample_record(holder=""), version, T)
    assert done.wait(20), "the release did not end the standby's wait"
    assert standby.wait_reads == 0
    released = standby.get(T)
    assert released is not None and released.record.holder == ""


def test_a_session_event_or_another_version_makes_the_wait_read(zk_server: ZooKeeper, path: str, open_backend) -> None:
    url = zk_server.url(path)
    leader, standby = open_backend(url).lock("e"), open_backend(url).lock("e")
    old = leader.create(sample_record(), T)
    got = standby.get(T)
    assert got is not None and got.version == old
    standby._wake()  # what a suspended or reconnected session does: a watch may be gone
    standby.wait_for_change(old, 0.2)
    assert standby.wait_reads == 1
    new = leader.update(sample_record(holder="next"), old, T)
    assert standby.get(T).version == new  # type: ignore[union-attr]
    standby.wait_for_change(old, LONG)  # not the version the get read: read, changed, return
    assert standby.wait_reads == 2


def test_the_read_after_the_watch_fired_skips_the_sync(zk_server: ZooKeeper, path: str, open_backend) -> None:
    """A standby's read woken by its data watch is two requests, not three: the watch event
    came after the session's server applied the change, so no ``sync`` is needed to see it.
    Any other read (the first, one after a session event) still syncs, and every read sees
    the leader's latest write."""
    url = zk_server.url(path)
    leader, backend = open_backend(url).lock("y"), open_backend(url)
    standby = backend.lock("y")
    version = leader.create(sample_record(holder="leader"), T)
    assert standby.get(T) is not None  # connects
    assert wait_for(lambda: standby._generation > 0)
    syncs = count_calls(backend._session(), "sync_async")
    assert standby.get(T) is not None  # nothing fired since the last read: synced
    assert syncs[0] == 1
    for i in range(5):
        version = leader.update(sample_record(holder="leader", renew_time=1_700_000_300.0 + i), version, T)
        assert wait_for(lambda: standby._fired > standby._watched[1])  # the watch fired
        got = standby.get(T)
        assert got is not None and got.version == version
    assert syncs[0] == 1  # five reads after five watch events: no sync
    standby._wake()  # a session event (suspended, reconnected): the next read syncs again
    version = leader.update(sample_record(holder="leader", renew_time=1_700_000_400.0), version, T)
    assert wait_for(lambda: standby._fired > standby._watched[1])
    got = standby.get(T)
    assert got is not None and got.version == version
    assert syncs[0] == 2


def test_a_missing_lock_node_is_watched_for_its_creation(zk_server: ZooKeeper, path: str, open_backend) -> None:
    url = zk_server.url(path)
    writer, standby = open_backend(url).lock("m"), open_backend(url).lock("m")
    assert standby.get(T) is None
    done = _wait_in_thread(standby, None)
    writer.create(sample_record(), T)
    assert done.wait(20), "the creation did not end the wait"


def test_a_standby_election_reads_once_per_renewal_and_takes_over_on_release(zk_server: ZooKeeper, path: str,
                                                                             open_backend) -> None:  # fmt: skip
    from celery_leader import Election

    url = zk_server.url(path)
    timing = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.2}
    leader = Election("beat", url=url, identity="leader", **timing).start()
    standby_lock = open_backend(url).lock("beat")
    reads = count_calls(standby_lock, "get")
    standby = Election("beat", lock=standby_lock, identity="standby", **timing)
    try:
        assert leader.wait_until_leader(20)
        standby.start()
        assert wait_for(lambda: reads[0] >= 15), "the standby did not read"
        assert standby.leader == "leader" and not standby.is_leader
        # its waits trusted the election's reads: at most one read of their own, after the
        # session's first CONNECTED event
        assert standby_lock.wait_reads <= 1
        leader.stop()  # releases: the data watch wakes the standby
        assert standby.wait_until_leader(20)
    finally:
        standby.stop()
        leader.stop()


def test_the_connection_thread_makes_no_selector_per_request(zk_server: ZooKeeper, path: str, open_backend,
                                                             monkeypatch) -> None:  # fmt: skip
    """kazoo's own handler builds, registers and closes an epoll selector for every ``select``
    (several per request): the backend's handler uses ``select.select`` on kazoo's sockets."""
    import selectors

    made = [0]
    real = selectors.DefaultSelector

    def counted() -> selectors.BaseSelector:
        made[0] += 1
        return real()

    url = zk_server.url(path)
    leader, standby = open_backend(url).lock("sel"), open_backend(url).lock("sel")
    version = leader.create(sample_record(holder="leader"), T)
    assert standby.get(T) is not None
    monkeypatch.setattr(selectors, "DefaultSelector", counted)
    for i in range(10):
        version = leader.update(sample_record(holder="leader", renew_time=1_700_000_200.0 + i), version, T)
        got = standby.get(T)
        assert got is not None and got.version == version
    assert made[0] == 0


def test_the_handler_select_takes_descriptors_above_fd_setsize() -> None:
    """``select.select`` refuses a descriptor >= 1024 (a process with many files open): the
    handler then answers through kazoo's selector, with the same result."""
    import resource
    import socket

    from celery_leader.backends.zookeeper import _Handler

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1100:
        if hard != resource.RLIM_INFINITY and hard <= 1100:
            pytest.skip("cannot open a descriptor above 1024 here")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1500))
    try:
        handler = _Handler()
        assert handler.select([high], [], [], 0.0)[0] == []
        b.sendall(b"x")
        assert handler.select([high], [], [], 5.0)[0] == [high]
        assert handler.select([], [high], [], 5.0)[1] == [high]
        low_r = handler.select([a, b], [], [], 5.0)[0]
        assert low_r == [a]
    finally:
        high.close()
        a.close()
        b.close()
        if soft <= 1100:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_our_data_watches_fire_on_the_connection_thread(zk_server: ZooKeeper, path: str, open_backend) -> None:
    """A data watch of our lock wakes its waiter straight from kazoo's connection thread,
    not through kazoo's callback thread (two wake-ups less per renewal of the leader);
    other callbacks still go through that thread."""
    url = zk_server.url(path)
    leader, standby = open_backend(url).lock("inline"), open_backend(url).lock("inline")
    version = leader.create(sample_record(holder="leader"), T)
    assert standby.get(T) is not None
    handler = standby._backend._session().handler
    queued = count_calls(handler.callback_queue, "put")
    woke_in: list[str] = []

    class Spied(threading.Condition):
        def notify_all(self) -> None:
            woke_in.append(threading.current_thread().name)
            super().notify_all()

    standby._changed = Spied()
    for i in range(5):
        got = standby.get(T)  # sets the watch
        assert got is not None and got.version == version
        done = _wait_in_thread(standby, got.version)
        version = leader.update(sample_record(holder="leader", renew_time=1_700_000_300.0 + i), version, T)
        assert done.wait(20), "the renewal did not end the standby's wait"
    assert queued[0] == 0 and len(woke_in) == 5, (woke_in, queued)
    # any other watch still goes to kazoo's callback thread, which runs it
    ran: list[str] = []
    standby._backend._session().get(standby.path, watch=lambda event: ran.append(threading.current_thread().name))
    leader.update(sample_record(holder="leader", renew_time=1_700_000_400.0), version, T)
    assert wait_for(lambda: ran) and queued[0] >= 1
    assert ran[0] not in woke_in, (ran, woke_in)
