"""wait_for_change through the watch API: cut streams, 410 Gone, restarts, deletes, close."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from celery_leader.testing import sample_record

from ..elections import wait_for
from .apiserver import LeaseAPIServer
from .conftest import NAMESPACE

TIMEOUT = 5.0
#: for things that must happen (a watch open, a wait ended by a change): only safety is timed
WAIT = 60.0


class Waiter:
    """Runs ``lock.wait_for_change(version, timeout)`` in a thread and times it."""

    def __init__(self, lock, version, timeout: float, hinted: bool = False) -> None:
        self.done = threading.Event()
        self.started = time.monotonic()
        self.elapsed = -1.0
        self.error: BaseException | None = None
        #: what ``wait_for_change_hinted`` handed back (``hinted``)
        self.hint = None

        def run() -> None:
            try:
                if hinted:
                    self.hint = lock.wait_for_change_hinted(version, timeout)
                else:
                    lock.wait_for_change(version, timeout)
            except BaseException as exc:  # noqa: BLE001 - asserted on
                self.error = exc
            self.elapsed = time.monotonic() - self.started
            self.done.set()

        threading.Thread(target=run, daemon=True).start()


def _watch_requests(server: LeaseAPIServer) -> int:
    return server.requests["watch"]


def _watching(server: LeaseAPIServer, started: int = 0, waiter: Waiter | None = None) -> None:
    """Until a watch stream started after the first ``started`` is open on the server: from
    then on it is sent every change and broken by every cut (a waiter that returned first fails)."""
    wait_for(lambda: (waiter is not None and waiter.done.is_set())
             or (server.watches_started > started and server.watches_open >= 1), WAIT)
    assert waiter is None or not waiter.done.is_set(), f"the wait returned before its watch was open: {waiter.error!r}"


def test_cut_stream_reconnects_and_still_sees_the_change(apiserver, make_lock) -> None:
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = writer.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, version, 120.0)
    _watching(apiserver, waiter=waiter)
    before = _watch_requests(apiserver)
    for _ in range(3):
        started = apiserver.watches_started
        apiserver.cut_watches()
        _watching(apiserver, started, waiter)  # reconnected; "a cut stream is not a change"
    assert _watch_requests(apiserver) >= before + 3, "the watch did not reconnect after the cuts"
    writer.update(sample_record(holder="b"), version, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
def test_change_during_restart_is_found_through_410_and_reread(apiserver, make_lock, gone_as_http) -> None:
    apiserver.gone_as_http = gone_as_http
    apiserver.allowed_verbs = {"get", "create", "update", "watch"}  # the documented Role
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = writer.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, version, 120.0)
    _watching(apiserver, waiter=waiter)
    apiserver.stop()
    # written while the watch cannot be connected (through the store, as another apiserver would)
    with apiserver.cond:
        obj = apiserver.objects[(NAMESPACE, "beat")]
        obj["spec"]["holderIdentity"] = "other"
        apiserver._commit(NAMESPACE, "beat", obj, "MODIFIED")
    reads = apiserver.requests["get"]
    apiserver.restart()  # a restart empties the watch cache: the old version is now too old
    assert waiter.done.wait(WAIT), "the change made while the server was down was missed"
    assert waiter.error is None
    assert apiserver.requests["get"] > reads, "410 Gone did not lead to a fresh read"


def test_restart_without_change_keeps_waiting(apiserver, make_lock) -> None:
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    make_lock("other").create(sample_record(), TIMEOUT)  # the revision moves past our version
    # the wait must meet the restart: its watch reconnects and gets 410 Gone. A machine so slow
    # that a short wait ended first (no 410 served to it) tries again with a longer one
    for timeout in (2.5, 10.0, 40.0):
        started = apiserver.watches_started
        waiter = Waiter(lock, version, timeout)
        wait_for(lambda w=waiter, n=started: w.done.is_set() or apiserver.watches_started > n, WAIT)
        if waiter.done.is_set():
            continue  # ended before its watch was open
        gone, reads = apiserver.requests["watch gone"], apiserver.requests["get"]
        apiserver.restart()  # 410 for the old version; the re-read shows it unchanged
        assert waiter.done.wait(timeout + WAIT) and waiter.error is None
        if apiserver.requests["watch gone"] > gone:
            break
    else:
        raise AssertionError("the wait never met the restart")
    assert apiserver.requests["get"] > reads, "410 Gone did not lead to a fresh read"
    assert apiserver.requests["list"] == 0, "the watch needs only get and watch"
    assert waiter.elapsed >= timeout - 0.2, f"returned after {waiter.elapsed:.2f}s without a change"


def test_server_down_for_the_whole_wait_returns_at_the_timeout(apiserver, make_lock) -> None:
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    apiserver.stop()
    started = time.monotonic()
    lock.wait_for_change(version, 1.0)
    assert 0.9 <= time.monotonic() - started < 10.0  # at the timeout: neither early nor hanging


def test_bookmarks_keep_the_watch_going(apiserver, make_lock) -> None:
    apiserver.bookmark_interval = 0.2
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = writer.create(sample_record(), TIMEOUT)
    # other Leases move the revision on; only bookmarks tell our watch about it
    other = make_lock("other")
    v = other.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, version, 120.0)
    _watching(apiserver, waiter=waiter)
    for i in range(5):
        v = other.update(sample_record(transitions=i + 10), v, TIMEOUT)
        time.sleep(0.15)
    assert not waiter.done.is_set(), "changes of another Lease woke the watcher"
    writer.update(sample_record(holder="b"), version, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None


def test_absent_lease_then_created(apiserver, make_lock) -> None:
    apiserver.allowed_verbs = {"get", "create", "update", "watch"}  # the documented Role
    watcher, writer = make_lock("beat"), make_lock("beat")
    assert watcher.get(TIMEOUT) is None
    waiter = Waiter(watcher, None, 120.0)
    _watching(apiserver, waiter=waiter)
    writer.create(sample_record(), TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None


def test_deleted_lease_is_a_change(apiserver, make_lock) -> None:
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    waiter = Waiter(lock, version, 120.0)
    _watching(apiserver, waiter=waiter)
    apiserver.delete(NAMESPACE, "beat")
    assert waiter.done.wait(WAIT) and waiter.error is None


def test_close_ends_a_wait(apiserver, make_lock) -> None:
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    waiter = Waiter(lock, version, 120.0)
    _watching(apiserver, waiter=waiter)
    lock.close()
    assert waiter.done.wait(WAIT), "close() did not end the watch"
    lock.close()


def test_close_before_the_watch_is_answered_ends_the_wait(apiserver, make_lock) -> None:
    """close() while the watch request waits for its answer: the stream that then comes is
    not read (it was not there to shut down when close() ran)."""
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    with apiserver.stall():
        waiter = Waiter(lock, version, 120.0)
        wait_for(lambda: apiserver.held >= 1, WAIT)  # the watch request is in, unanswered
        lock.close()
    assert waiter.done.wait(WAIT), "close() did not end the watch answered after it"
    assert waiter.error is None


_RENEWALS = itertools.count(2)


def _renew_and_wait(watcher, writer, version: str, times: int) -> str:
    """A standby's cycle ``times`` over: its wait ends on the leader's renewal, then it reads.

    (Each renewal writes a new record: an update that changes nothing keeps its version and
    sends no event, as on a real API server.)"""
    for _ in range(times):
        waiter = Waiter(watcher, version, 120.0)
        wait_for(lambda w=waiter: w.done.is_set() or watcher._kept is None or watcher._watch_guard.locked(), WAIT)
        version = writer.update(sample_record(transitions=next(_RENEWALS)), version, TIMEOUT)
        assert waiter.done.wait(WAIT) and waiter.error is None
        got = watcher.get(TIMEOUT)
        assert got is not None and got.version == version
    return version


def _next_change_ends_a_wait(apiserver, watcher, writer, version: str, holder: str) -> None:
    """A wait from ``version`` is open on the server; ``writer``'s next write ends it, without error."""
    waiter = Waiter(watcher, version, 120.0)
    _watching(apiserver, waiter=waiter)
    writer.update(sample_record(holder=holder), version, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None


def test_a_standby_keeps_one_watch_across_its_leaders_renewals(apiserver, make_lock) -> None:
    """Issue 21: a wait ends on the renewal's event, the next wait reads on from the same stream."""
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = writer.create(sample_record(), TIMEOUT)
    version = _renew_and_wait(watcher, writer, version, 1)
    before, opened = _watch_requests(apiserver), watcher.watches_opened
    _renew_and_wait(watcher, writer, version, 6)
    assert _watch_requests(apiserver) == before, "a wait opened a new watch while its stream was open"
    assert watcher.watches_opened == opened and watcher.kept_watch_waits >= 6
    assert apiserver.watches_open == 1


def test_a_change_read_before_the_next_wait_ends_it_at_once(apiserver, make_lock) -> None:
    """Two renewals came on the kept stream; a wait for the first one's version returns at once."""
    watcher, writer = make_lock("beat"), make_lock("beat")
    v1 = writer.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, v1, 120.0)
    _watching(apiserver, waiter=waiter)
    v2 = writer.update(sample_record(transitions=2), v1, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None
    writer.update(sample_record(transitions=3), v2, TIMEOUT)
    watcher.wait_for_change(v2, 30.0)  # reads v3's event from the kept stream
    requests = _watch_requests(apiserver)
    started = time.monotonic()
    watcher.wait_for_change(v2, 30.0)  # v3 was already read: no wait, no request
    assert time.monotonic() - started < 5.0 and _watch_requests(apiserver) == requests


def test_a_kept_stream_still_ends_each_wait_at_its_deadline(apiserver, make_lock) -> None:
    """No change: the wait returns at its timeout even while bookmarks arrive on its stream."""
    apiserver.bookmark_interval = 0.2
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = _renew_and_wait(watcher, writer, writer.create(sample_record(), TIMEOUT), 1)
    assert watcher._kept is not None
    started = time.monotonic()
    watcher.wait_for_change(version, 1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 10.0, f"returned after {elapsed:.2f}s"
    # and the next change is still seen (on a new stream: the timed-out one was dropped)
    _next_change_ends_a_wait(apiserver, watcher, writer, version, "b")


def test_a_kept_stream_cut_between_waits_is_replaced_and_the_change_seen(apiserver, make_lock) -> None:
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = _renew_and_wait(watcher, writer, writer.create(sample_record(), TIMEOUT), 1)
    assert watcher._kept is not None
    apiserver.cut_watches()
    version = writer.update(sample_record(holder="b"), version, TIMEOUT)
    # the change came after the cut: whatever the old stream still holds, a wait for the
    # version before it must end (on the old stream's end it watches anew from its version)
    got = watcher.get(TIMEOUT)
    assert got is not None and got.version == version
    _next_change_ends_a_wait(apiserver, watcher, writer, version, "c")


def test_a_standby_that_writes_drops_its_kept_stream(apiserver, make_lock) -> None:
    lock, other = make_lock("beat"), make_lock("beat")
    version = _renew_and_wait(lock, other, other.create(sample_record(), TIMEOUT), 1)
    assert lock._kept is not None and apiserver.watches_open == 1
    lock.update(sample_record(holder="me"), version, TIMEOUT)  # it leads now: no more waits
    assert lock._kept is None
    wait_for(lambda: apiserver.watches_open == 0, WAIT)


def test_a_kept_stream_cut_while_a_wait_reads_it_is_not_a_change(apiserver, make_lock) -> None:
    """The wait reading the kept stream sees it break: it watches anew from its version
    (not a change, no error), and the next change still ends it."""
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = _renew_and_wait(watcher, writer, writer.create(sample_record(), TIMEOUT), 1)
    assert watcher._kept is not None
    started = apiserver.watches_started
    waiter = Waiter(watcher, version, 120.0)
    wait_for(lambda: waiter.done.is_set() or watcher._watch_guard.locked(), WAIT)
    apiserver.cut_watches()
    _watching(apiserver, started, waiter)  # a new stream, and the wait goes on
    writer.update(sample_record(holder="b"), version, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None


# --- hints: the watch event carries the Lease (issue 21) ---------------------------------------


def _stored(lock, version: str):
    got = lock.get(TIMEOUT)
    assert got is not None and got.version == version
    return got


def test_the_changes_event_is_the_hint(apiserver, make_lock) -> None:
    """A wait that ends on an event hands back the Lease the event carried: the record and
    the version a read would return, on a new stream, on the kept one, and when the change
    already came on the kept stream before the wait."""
    watcher, writer = make_lock("beat"), make_lock("beat")
    v1 = writer.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, v1, 120.0, hinted=True)
    _watching(apiserver, waiter=waiter)
    v2 = writer.update(sample_record(holder="a", transitions=2), v1, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None
    assert waiter.hint == _stored(writer, v2)
    assert watcher._kept is not None
    # on the kept stream
    waiter = Waiter(watcher, v2, 120.0, hinted=True)
    wait_for(lambda: waiter.done.is_set() or watcher._watch_guard.locked(), WAIT)
    v3 = writer.update(sample_record(holder="a", transitions=3), v2, TIMEOUT)
    assert waiter.done.wait(WAIT) and waiter.error is None
    assert waiter.hint == _stored(writer, v3)
    # a change after v3 read from the kept stream; a wait for v3 again returns it at once
    v4 = writer.update(sample_record(holder="a", transitions=4), v3, TIMEOUT)
    assert watcher.wait_for_change_hinted(v3, 30.0) == _stored(writer, v4)
    assert watcher.wait_for_change_hinted(v3, 30.0) == _stored(writer, v4)


def test_a_deletion_and_a_timeout_give_no_hint(apiserver, make_lock) -> None:
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    assert lock.wait_for_change_hinted(version, 0.5) is None  # no change
    waiter = Waiter(lock, version, 120.0, hinted=True)
    _watching(apiserver, waiter=waiter)
    apiserver.delete(NAMESPACE, "beat")
    assert waiter.done.wait(WAIT) and waiter.error is None
    assert waiter.hint is None
    # and after it, on the kept stream, a wait for the version before the deletion
    assert lock.wait_for_change_hinted(version, 0.5) is None


def test_a_change_found_through_410_hints_the_read(apiserver, make_lock) -> None:
    watcher, writer = make_lock("beat"), make_lock("beat")
    version = writer.create(sample_record(), TIMEOUT)
    waiter = Waiter(watcher, version, 120.0, hinted=True)
    _watching(apiserver, waiter=waiter)
    apiserver.stop()
    with apiserver.cond:
        obj = apiserver.objects[(NAMESPACE, "beat")]
        obj["spec"]["holderIdentity"] = "other"
        changed = apiserver._commit(NAMESPACE, "beat", obj, "MODIFIED")
    apiserver.restart()
    assert waiter.done.wait(WAIT) and waiter.error is None
    assert waiter.hint == _stored(writer, changed)
    assert waiter.hint.record.holder == "other"


def test_a_garbage_lease_in_an_event_is_an_unreadable_hint(apiserver, make_lock) -> None:
    """A Lease the API server accepts but that is not a leader record (held, without a
    lease duration): the hint says so (the engine then reads)."""
    lock = make_lock("beat")
    version = lock.create(sample_record(), TIMEOUT)
    waiter = Waiter(lock, version, 120.0, hinted=True)
    _watching(apiserver, waiter=waiter)
    with apiserver.cond:
        obj = apiserver.objects[(NAMESPACE, "beat")]
        obj["spec"]["holderIdentity"] = "someone"
        del obj["spec"]["leaseDurationSeconds"]
        changed = apiserver._commit(NAMESPACE, "beat", obj, "MODIFIED")
    assert waiter.done.wait(WAIT) and waiter.error is None
    assert waiter.hint is not None and waiter.hint.version == changed
    assert waiter.hint.record.decode_error
    assert waiter.hint == _stored(lock, changed)
