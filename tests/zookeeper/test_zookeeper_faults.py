"""Elections against private ZooKeeper servers that the tests pause, kill and tamper with:
standalone, session loss, and a three-server ensemble with a server killed and the
leader's server cut off.

Safety is asserted exactly (never two leaders; nobody leads while ZooKeeper cannot confirm
a write; tokens increase); liveness only with generous waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.tcpproxy import TcpProxy
from celery_leader import Election
from celery_leader.backends.zookeeper import VANISHED_HOLDER
from tests.elections import (
    LEASE,
    WATCHED,
    Watch,
    asyncio_handover,
    handover_through_the_watch,
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

from .conftest import ZooKeeper

SESSION = "session_timeout=2"


def test_server_paused_while_leading(zk_factory: Callable[..., ZooKeeper], elections) -> None:
    server = zk_factory(1)
    es = elections(server.url(query=SESSION))
    paused_while_leading(es, lambda: server.pause(0), lambda: server.resume(0), what="ZooKeeper")


def test_sessions_expire_then_elections_and_watches_recover(zk_factory, elections) -> None:
    server = zk_factory(1)
    # every candidate reaches the server through its own proxy; black-holing them all lets
    # the (running) server expire every session: a pause of the server itself would race
    # the clients' buffered pings against its session tracker on resume
    proxies = [TcpProxy(server.client_ports[0]) for _ in range(3)]
    try:
        es = elections([f"zookeeper://127.0.0.1:{p.port}/test?session_timeout=1" for p in proxies], n=3)
        with Watch(es) as watch:
            first = wait_for(lambda: leader_of(es))
            token = first.token
            sessions = {e.backend._client.client_id[0] for e in es}
            cut = time.monotonic()
            for p in proxies:
                p.set_mode("blackhole")
            time.sleep(2.5)  # past every session's timeout (1 s): the server expires them all
            for p in proxies:
                p.set_mode("reset")
                p.set_mode("pass")
            back = time.monotonic()
            second = wait_for(lambda: leader_of(es))
            wait_for(lambda: all(e.backend._client.client_id for e in es))
            assert not sessions & {e.backend._client.client_id[0] for e in es}, "a session survived"
            # the cut-off leader stopped at its deadline: nobody led while the sessions were away
            assert watch.leaders_between(cut + LEASE, back) == set()
            assert second.token is not None and token is not None and second.token >= token
        assert not watch.overlaps()
        # new sessions: a release is still seen through a data watch, not by polling
        url = f"zookeeper://127.0.0.1:{proxies[0].port}/test?session_timeout=1"
        slow = [Election("h", url=url, identity=f"w{i}", **WATCHED) for i in range(2)]
        try:
            for e in slow:
                e.start()
            handover_through_the_watch(wait_for(lambda: leader_of(slow)), slow)
        finally:
            for e in slow:
                e.stop(timeout=5)
    finally:
        for p in proxies:
            p.close()


def test_server_killed_while_leading_then_back(zk_factory, elections) -> None:
    server = zk_factory(1)
    es = elections(server.url(query=SESSION))

    def back() -> None:
        server.start_member(0)  # same data directory: the lock and its fence survive
        assert server.wait_ready(60)

    outage_then_back(es, lambda: server.kill(0), back, downtime=LEASE, what="ZooKeeper", timeout=30)


def test_lock_node_deleted_by_hand_token_still_increases(zk_server: ZooKeeper, zk_admin, path: str, elections) -> None:
    es = elections(zk_server.url(path))
    second = lock_deleted_by_hand(es, lambda: zk_admin.delete(f"{path}/lock/beat"), VANISHED_HOLDER)
    assert zk_admin.get(f"{path}/fence/beat")[0] == str(second.token).encode()


def test_lock_node_overwritten_with_garbage(zk_server: ZooKeeper, zk_admin, path: str, elections) -> None:
    es = elections(zk_server.url(path))
    lock_overwritten_with_garbage(es, lambda: zk_admin.set(f"{path}/lock/beat", b"\x00\xffnot a record"))
    assert zk_admin.get(f"{path}/lock/beat")[0].startswith(b"{")


def test_graceful_handover_is_seen_by_the_watch(zk_server: ZooKeeper, path: str) -> None:
    watched_handovers(zk_server.url(path))  # followers poll every 30 s: each handover must come from the watch


# --- three servers ----------------------------------------------------------------------


def test_ensemble_server_killed_elections_carry_on(zk_factory, elections) -> None:
    ensemble = zk_factory(3)
    es = elections(ensemble.url(query=SESSION), n=3)  # every candidate lists every server
    quorum_member_killed(es, ensemble.kill, ensemble.leader, timeout=30)


def test_ensemble_leaders_server_cut_off(zk_factory, elections) -> None:
    ensemble = zk_factory(3)
    # candidate i reaches only server i: pausing server i cuts candidate i off
    es = elections([ensemble.url(members=[i], query=SESSION) for i in range(3)], n=3)
    leaders_member_cut_off(es, ensemble.pause, ensemble.resume, timeout=30)


def test_asyncio_driver_hands_over_through_the_watch(zk_server: ZooKeeper, path: str) -> None:
    asyncio_handover(zk_server.url(path))  # the standby polls every 30 s: it must take over through the watch
