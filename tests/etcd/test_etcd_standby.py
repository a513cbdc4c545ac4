"""An idle standby on etcd keeps one watch open across its waits: no read and no new watch
stream per renewal of the leader, and a release still ends its wait through the watch.

Counted, never timed: reads, watch streams opened, waits served by the kept watch."""

from __future__ import annotations

import json
import threading

import pytest

from celery_leader.backends.etcd import EtcdLock, _Stream
from celery_leader.testing import sample_record
from tests.elections import standby_follows_by_hints
from tests.wakeups import count_calls

from .conftest import EtcdCluster
from .test_etcd_config import _tls_cluster, pki  # noqa: F401 - the fixture

T = 5.0
#: long enough never to end a wait in these tests: a wait that returns was woken by an event
LONG = 60.0


def _standby_rounds(leader: EtcdLock, standby: EtcdLock, renewals: int) -> None:
    version = leader.create(sample_record(holder="leader"), T)
    got = standby.get(T)
    assert got is not None and got.version == version
    reads = count_calls(standby, "_read")
    # nothing changes: the wait reads once, opens the watch, and times out with it kept
    standby.wait_for_change(got.version, 0.3)
    assert (reads[0], standby.watches_opened) == (1, 1)
    for i in range(renewals):
        version = leader.update(sample_record(holder="leader", renew_time=1_700_000_100.0 + i), version, T)
        standby.wait_for_change(got.version, LONG)  # the renewal's event ends it
        got = standby.get(T)  # what the engine does next
        assert got is not None and got.version == version
    # one read per renewal (the engine's own get), no read by the waits, one watch in all
    assert reads[0] == 1 + renewals
    assert standby.watches_opened == 1
    assert standby.kept_watch_waits == renewals
    # a release (holder "") is seen through the kept watch, long before the wait's end
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (standby.wait_for_change(got.version, LONG), done.set()), daemon=True)
    waiter.start()
    leader.update(sample_record(holder=""), version, T)
    assert done.wait(20), "the release did not end the standby's wait"
    released = standby.get(T)
    assert released is not None and released.record.holder == ""
    assert standby.watches_opened == 1 and standby.kept_watch_waits == renewals + 1


def test_a_standby_keeps_one_watch_across_renewals(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    url = etcd_server.url(prefix)
    _standby_rounds(open_backend(url).lock("s"), open_backend(url).lock("s"), renewals=5)


def test_the_kept_watch_works_over_tls(etcd_factory, pki, open_backend) -> None:  # noqa: F811
    server, _ = pki
    cluster = _tls_cluster(etcd_factory, server)
    url = cluster.url("/tls", query=f"cacert={server['ca']}")
    _standby_rounds(open_backend(url).lock("s"), open_backend(url).lock("s"), renewals=3)


def test_a_broken_kept_watch_is_replaced(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    url = etcd_server.url(prefix)
    leader, standby = open_backend(url).lock("b"), open_backend(url).lock("b")
    version = leader.create(sample_record(), T)
    got = standby.get(T)
    assert got is not None
    standby.wait_for_change(got.version, 0.2)
    assert standby.watches_opened == 1
    kept = standby._watch
    assert kept is not None
    kept.close()  # the connection is gone (a member restarted, a proxy cut it)
    standby.wait_for_change(got.version, 0.2)  # reads, opens another, no change: times out
    assert standby.watches_opened == 2 and standby._watch is not kept
    version = leader.update(sample_record(holder="other"), version, T)
    standby.wait_for_change(got.version, LONG)
    assert standby.get(T).version == version  # type: ignore[union-attr]


def test_a_lock_that_writes_drops_its_kept_watch(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    """A standby that takes over leads and no longer waits: its watch would only fill up."""
    url = etcd_server.url(prefix)
    lock = open_backend(url).lock("w")
    version = lock.create(sample_record(), T)
    lock.wait_for_change(version, 0.2)
    assert lock._watch is not None
    lock.update(sample_record(holder="again"), version, T)
    assert lock._watch is None


def test_a_version_older_than_the_kept_watch_is_read_first(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    """A wait from a version the kept watch may not cover (it started later) reads first."""
    url = etcd_server.url(prefix)
    leader, standby = open_backend(url).lock("o"), open_backend(url).lock("o")
    old = leader.create(sample_record(), T)
    new = leader.update(sample_record(holder="next"), old, T)
    standby.wait_for_change(new, 0.2)  # watch from after ``new``
    reads = count_calls(standby, "_read")
    standby.wait_for_change(old, LONG)  # ``old`` is not current: the read says so at once
    assert reads[0] == 1


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11])
def test_the_chunked_stream_is_taken_apart_wherever_the_bytes_are_cut(cut: int) -> None:
    body = b'{"result":{"created":true}}\n{"result":{"events":[{"kv":{"mod_revision":"7"}}]}}'
    wire = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:30], body[30:])) + b"0\r\n\r\n"
    stream = _Stream.__new__(_Stream)
    stream._chunked, stream._raw, stream._chunk_left, stream._buffer = True, b"", None, b""
    stream._decoder = json.JSONDecoder()
    ended, messages = False, []
    for i in range(0, len(wire), cut):
        ended = stream._take(wire[i : i + cut])
        while (message := stream._decode()) is not None:
            messages.append(message)
        if ended:
            break
    assert ended
    assert messages == [{"result": {"created": True}}, {"result": {"events": [{"kv": {"mod_revision": "7"}}]}}]


def test_a_standby_election_keeps_one_watch_and_takes_over_on_release(etcd_server: EtcdCluster, prefix: str,
                                                                       open_backend) -> None:  # fmt: skip
    """The engine's standby: one watch over many renewals of the leader, and a graceful
    release still hands over through it."""
    from celery_leader import Election
    from tests.elections import wait_for

    url = etcd_server.url(prefix)
    timing = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.2}
    leader = Election("beat", url=url, identity="leader", **timing).start()
    standby_lock = open_backend(url).lock("beat")
    standby = Election("beat", lock=standby_lock, identity="standby", **timing)
    try:
        assert leader.wait_until_leader(20)
        standby.start()
        assert wait_for(lambda: standby_lock.kept_watch_waits >= 10), "the standby did not wait on its kept watch"
        assert standby.leader == "leader" and not standby.is_leader
        assert standby_lock.watches_opened == 1
        leader.stop()  # releases: the standby's watch sees it
        assert standby.wait_until_leader(20)
        assert standby_lock.watches_opened == 1
        assert standby_lock._watch is None  # it leads: its writes dropped the watch
    finally:
        standby.stop()
        leader.stop()


# --- hints: the watch event carries the lock key's value (issue 21) -----------------------------


def test_the_watch_event_is_the_hint(etcd_server: EtcdCluster, prefix: str, open_backend) -> None:
    """A wait that ends on an event hands back the record and the version a read returns:
    from the wait's own read (it showed a change before any watch), then from the kept
    watch's events."""
    url = etcd_server.url(prefix)
    leader, standby = open_backend(url).lock("h"), open_backend(url).lock("h")
    v1 = leader.create(sample_record(holder="leader", transitions=3), T)
    v2 = leader.update(sample_record(holder="leader", transitions=3, renew_time=1_700_000_001.0), v1, T)
    # the wait's read shows the change (no watch yet): the read is the hint
    assert standby.wait_for_change_hinted(v1, LONG) == standby.get(T)
    assert standby.wait_for_change_hinted(v2, 0.2) is None  # no change; the watch is kept
    followed = version = v2
    for i in range(3):
        version = leader.update(sample_record(holder="leader", transitions=3, renew_time=1_700_000_010.0 + i), version, T)
        hint = standby.wait_for_change_hinted(followed, LONG)
        assert hint is not None and hint == standby.get(T), i
        followed = hint.version
    assert standby.watches_opened == 1 and standby.kept_watch_waits == 3


def test_a_deletion_garbage_and_a_foreign_token_give_no_usable_hint(etcd_server: EtcdCluster, prefix: str,
                                                                      open_backend) -> None:  # fmt: skip
    url = etcd_server.url(prefix)
    leader, standby = open_backend(url).lock("g"), open_backend(url).lock("g")
    version = leader.create(sample_record(holder="leader", transitions=2), T)
    assert standby.wait_for_change_hinted(version, 0.2) is None  # watch kept from here
    etcd_server.put(standby.key, b"\xff garbage, not a record")
    assert standby.wait_for_change_hinted(version, LONG) is None
    got = standby.get(T)
    assert got is not None and got.record.decode_error
    etcd_server.delete(standby.key)
    assert standby.wait_for_change_hinted(got.version, LONG) is None
    got = standby.get(T)
    assert got is not None and got.record.holder == "(lock key vanished)"


def test_a_hand_written_key_gives_a_hint_whose_takeover_conflicts(etcd_server: EtcdCluster, prefix: str,
                                                                    open_backend) -> None:  # fmt: skip
    """The lock key written by hand (its fence untouched): the hint's version assumes both
    keys were written together, so it is not the stored one. A compare-and-swap against it
    fails (Conflict), and a read then gives the real version: never a second writer."""
    from celery_leader.errors import Conflict
    from celery_leader.record import encode_record

    url = etcd_server.url(prefix)
    leader, standby = open_backend(url).lock("f"), open_backend(url).lock("f")
    version = leader.create(sample_record(holder="leader", transitions=2), T)
    assert standby.wait_for_change_hinted(version, 0.2) is None
    etcd_server.put(standby.key, encode_record(sample_record(holder="leader", transitions=2, renew_time=1_700_000_500.0)))
    hint = standby.wait_for_change_hinted(version, LONG)
    stored = standby.get(T)
    assert hint is not None and stored is not None
    assert hint.record == stored.record and hint.version != stored.version
    with pytest.raises(Conflict):
        standby.update(sample_record(holder="standby", transitions=3), hint.version, T)
    standby.update(sample_record(holder="standby", transitions=3), stored.version, T)


def test_a_standby_election_follows_renewals_from_the_watch_events(etcd_server: EtcdCluster, prefix: str,
                                                                   open_backend) -> None:  # fmt: skip
    url = etcd_server.url(prefix)
    standby_follows_by_hints("hints", open_backend(url), open_backend(url).lock("hints"))
