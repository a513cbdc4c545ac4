"""Elections against private etcd members that the tests kill, pause and tamper with:
one member, and a three-member cluster with a member killed and the leader's member cut off.

Safety is asserted exactly (never two leaders; nobody leads while etcd cannot confirm a
write; tokens increase); liveness only with generous waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery_leader.backends.etcd import VANISHED_HOLDER
from tests.elections import (
    LEASE,
    Watch,
    asyncio_handover,
    leader_of,
    leaders_member_cut_off,
    lock_deleted_by_hand,
    lock_overwritten_with_garbage,
    outage_then_back,
    paused_while_leading,
    quorum_member_killed,
    wait_for,
    watched_handovers,
)

from .conftest import EtcdCluster


def test_member_killed_while_leading_then_back(etcd_factory: Callable[..., EtcdCluster], elections) -> None:
    cluster = etcd_factory(1)
    es = elections(cluster.url())
    # same data directory when it is back: the lock and its fence survive
    outage_then_back(es, lambda: cluster.kill(0), lambda: cluster.start_member(0), downtime=2 * LEASE, what="etcd")


def test_member_paused_while_leading(etcd_factory, elections) -> None:
    cluster = etcd_factory(1)
    es = elections(cluster.url())
    paused_while_leading(es, lambda: cluster.pause(0), lambda: cluster.resume(0), what="etcd")


def test_lock_key_deleted_by_hand_token_still_increases(etcd_server: EtcdCluster, prefix: str, elections) -> None:
    es = elections(etcd_server.url(prefix))
    second = lock_deleted_by_hand(es, lambda: etcd_server.delete(f"{prefix}/lock/beat"), VANISHED_HOLDER)
    assert etcd_server.get(f"{prefix}/fence/beat") == str(second.token).encode()


def test_lock_key_overwritten_with_garbage(etcd_server: EtcdCluster, prefix: str, elections) -> None:
    es = elections(etcd_server.url(prefix))
    lock_overwritten_with_garbage(es, lambda: etcd_server.put(f"{prefix}/lock/beat", b"\x00\xffnot a record"))
    raw = etcd_server.get(f"{prefix}/lock/beat")
    assert raw is not None and raw.startswith(b"{")


def test_graceful_handover_is_seen_by_the_watch(etcd_server: EtcdCluster, prefix: str) -> None:
    watched_handovers(etcd_server.url(prefix))  # followers poll every 30 s: each handover must come from the watch


# --- three members ----------------------------------------------------------------------


def test_cluster_member_killed_elections_carry_on(etcd_factory, elections) -> None:
    cluster = etcd_factory(3)
    es = elections(cluster.url(), n=3)  # every candidate lists every member
    quorum_member_killed(es, cluster.kill, cluster.leader_member, settle=LEASE)


def test_cluster_leaders_member_cut_off(etcd_factory, elections) -> None:
    cluster = etcd_factory(3)
    # candidate i reaches only member i: cutting member i off cuts candidate i off
    es = elections([cluster.url(members=[i]) for i in range(3)], n=3)
    leaders_member_cut_off(es, cluster.pause, cluster.resume)


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
    asyncio_handover(etcd_server.url(prefix))  # the standby polls every 30 s: it must take over through the watch
