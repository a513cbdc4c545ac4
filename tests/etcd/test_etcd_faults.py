"""Elections against private etcd members that the tests kill, pause and tamper with:
one member, and a three-member cluster with a member killed and the leader's member cut off.

Safety is asserted exactly (never two leaders; nobody leads while etcd cannot confirm a
write; tokens increase); liveness only with generous waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery_leader import Election
from celery_leader.backends.etcd import VANISHED_HOLDER
from tests.elections import LEASE, Watch, asyncio_handover, leader_of, wait_for

from .conftest import EtcdCluster


def test_member_killed_while_leading_then_back(etcd_factory: Callable[..., EtcdCluster], elections) -> None:
    cluster = etcd_factory(1)
    es = elections(cluster.url())
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        killed = time.monotonic()
        cluster.kill(0)
        # the leader stops by its deadline (< one lease after its last successful renewal)
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 1.0)
        time.sleep(2 * LEASE)
        back = time.monotonic()
        cluster.start_member(0)  # same data directory: the lock and its fence survive
        second = wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert watch.leaders_between(killed + LEASE, back) == set(), "somebody led while etcd was down"
    assert second.token is not None and token is not None and second.token > token


def test_member_paused_while_leading(etcd_factory, elections) -> None:
    cluster = etcd_factory(1)
    es = elections(cluster.url())
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        paused = time.monotonic()
        cluster.pause(0)
        try:
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            time.sleep(LEASE)
        finally:
            cluster.resume(0)
            resumed = time.monotonic()
        wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert watch.leaders_between(paused + LEASE, resumed) == set()
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_lock_key_deleted_by_hand_token_still_increases(etcd_server: EtcdCluster, prefix: str, elections) -> None:
    es = elections(etcd_server.url(prefix))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        deleted = time.monotonic()
        etcd_server.delete(f"{prefix}/lock/beat")
        # the holder learns at its next renewal; everyone waits one lease before taking over
        wait_for(lambda: not first.is_leader, 5)
        assert any(e.leader == VANISHED_HOLDER for e in es), [e.leader for e in es]
        second = wait_for(lambda: leader_of(es))
        assert second.token is not None and token is not None and second.token > token
    assert not watch.overlaps()
    assert etcd_server.get(f"{prefix}/fence/beat") == str(second.token).encode()
    gap = [t for t, leaders, _ in watch.samples if t > deleted and not any(leaders)]
    assert gap, "leadership moved on without a pause"


def test_lock_key_overwritten_with_garbage(etcd_server: EtcdCluster, prefix: str, elections) -> None:
    es = elections(etcd_server.url(prefix))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        etcd_server.put(f"{prefix}/lock/beat", b"\x00\xffnot a record")
        wait_for(lambda: not first.is_leader, LEASE + 1.0)
        second = wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert second.token is not None and token is not None and second.token > token
    raw = etcd_server.get(f"{prefix}/lock/beat")
    assert raw is not None and raw.startswith(b"{")


def test_graceful_handover_is_seen_by_the_watch(etcd_server: EtcdCluster, prefix: str) -> None:
    # A 2 s retry period: a follower that only polled would see a release after ~1.1 s on
    # average; three handovers all under 0.5 s would be a 1-in-100 fluke for polling.
    url = etcd_server.url(prefix)
    es = [
        Election("beat", url=url, identity=f"n{i}", lease_duration=10.0, renew_deadline=6.0, retry_period=2.0)
        for i in range(4)
    ]
    handovers = []
    try:
        for e in es:
            e.start()
        leader = wait_for(lambda: leader_of(es))
        for _ in range(3):
            time.sleep(0.5)  # the followers have read the record and watch it
            started = time.monotonic()
            leader.step_down()
            leader = wait_for(lambda old=leader: (lambda e: e if e is not old else None)(leader_of(es)))
            handovers.append(time.monotonic() - started)
    finally:
        for e in es:
            e.stop(timeout=5)
    assert max(handovers) < 0.5, handovers


# --- three members ----------------------------------------------------------------------


def test_cluster_member_killed_elections_carry_on(etcd_factory, elections) -> None:
    cluster = etcd_factory(3)
    es = elections(cluster.url(), n=3)  # every candidate lists every member
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        raft_leader = cluster.leader_member()
        cluster.kill(raft_leader)  # the member that orders all writes
        time.sleep(LEASE)
        now = wait_for(lambda: leader_of(es))
        # a quorum remains: somebody leads with writes confirmed by it
        assert now.token is not None and token is not None and now.token >= token
        cluster.kill((raft_leader + 1) % 3)  # quorum lost: nobody may keep leading
        lost = time.monotonic()
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 2.0)
        time.sleep(LEASE)
        assert watch.leaders_between(lost + LEASE + 0.5, time.monotonic()) == set()
    assert not watch.overlaps()
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_cluster_leaders_member_cut_off(etcd_factory, elections) -> None:
    cluster = etcd_factory(3)
    # candidate i reaches only member i: cutting member i off cuts candidate i off
    es = elections([cluster.url(members=[i]) for i in range(3)], n=3)
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        i = es.index(first)
        token = first.token
        cut = time.monotonic()
        cluster.pause(i)  # SIGSTOP: connections stay open, nothing answers
        try:
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            second = wait_for(lambda: leader_of(es))
            assert second is not first
            assert second.token is not None and token is not None and second.token > token
            time.sleep(LEASE)
        finally:
            cluster.resume(i)
        time.sleep(LEASE)  # the cut-off candidate sees the new term and follows
    assert not watch.overlaps()
    assert i not in watch.leaders_between(cut + LEASE, time.monotonic())
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_cluster_member_cut_off_client_moves_to_another(etcd_factory, elections) -> None:
    cluster = etcd_factory(3)
    # listing every member: a leader whose member stops answering continues through another
    es = elections(cluster.url(), n=2)
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        backend = first.backend
        member = backend.endpoints[backend._preferred].port
        i = cluster.client_ports.index(member)
        cluster.pause(i)
        try:
            time.sleep(3 * LEASE)
            assert wait_for(lambda: leader_of(es), 10) is not None
            moved = {e.backend.endpoints[e.backend._preferred].port for e in es}
            assert member not in moved, "a client still talks to the silent member"
        finally:
            cluster.resume(i)
    assert not watch.overlaps()
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_asyncio_driver_hands_over_through_the_watch(etcd_server: EtcdCluster, prefix: str) -> None:
    # retry period 2 s: a standby that polled would need about 2 s
    assert asyncio_handover(etcd_server.url(prefix)) < 1.0
