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
from tests.elections import LEASE, Watch, asyncio_handover, leader_of, wait_for

from .conftest import ZooKeeper

SESSION = "session_timeout=2"


def test_server_paused_while_leading(zk_factory: Callable[..., ZooKeeper], elections) -> None:
    server = zk_factory(1)
    es = elections(server.url(query=SESSION))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        paused = time.monotonic()
        server.pause(0)
        try:
            # the leader's renewals time out; it stops by its deadline
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            time.sleep(LEASE)
        finally:
            server.resume(0)
            resumed = time.monotonic()
        wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert watch.leaders_between(paused + LEASE, resumed) == set(), "somebody led while ZooKeeper was frozen"
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


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
        slow = [
            Election("h", url=url, identity=f"w{i}", lease_duration=10.0, renew_deadline=6.0, retry_period=2.0)
            for i in range(2)
        ]
        try:
            for e in slow:
                e.start()
            leader = wait_for(lambda: leader_of(slow))
            time.sleep(0.5)
            started = time.monotonic()
            leader.step_down()
            wait_for(lambda: (lambda e: e if e is not leader else None)(leader_of(slow)))
            assert time.monotonic() - started < 1.0
        finally:
            for e in slow:
                e.stop(timeout=5)
    finally:
        for p in proxies:
            p.close()


def test_server_killed_while_leading_then_back(zk_factory, elections) -> None:
    server = zk_factory(1)
    es = elections(server.url(query=SESSION))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        killed = time.monotonic()
        server.kill(0)
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 1.0)
        time.sleep(LEASE)
        back = time.monotonic()
        server.start_member(0)  # same data directory: the lock and its fence survive
        assert server.wait_ready(60)
        second = wait_for(lambda: leader_of(es), 30)
    assert not watch.overlaps()
    assert watch.leaders_between(killed + LEASE, back) == set(), "somebody led while ZooKeeper was down"
    assert second.token is not None and token is not None and second.token > token


def test_lock_node_deleted_by_hand_token_still_increases(zk_server: ZooKeeper, zk_admin, path: str, elections) -> None:
    es = elections(zk_server.url(path))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        deleted = time.monotonic()
        zk_admin.delete(f"{path}/lock/beat")
        wait_for(lambda: not first.is_leader, 5)
        assert any(e.leader == VANISHED_HOLDER for e in es), [e.leader for e in es]
        second = wait_for(lambda: leader_of(es))
        assert second.token is not None and token is not None and second.token > token
    assert not watch.overlaps()
    assert zk_admin.get(f"{path}/fence/beat")[0] == str(second.token).encode()
    gap = [t for t, leaders, _ in watch.samples if t > deleted and not any(leaders)]
    assert gap, "leadership moved on without a pause"


def test_lock_node_overwritten_with_garbage(zk_server: ZooKeeper, zk_admin, path: str, elections) -> None:
    es = elections(zk_server.url(path))
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        zk_admin.set(f"{path}/lock/beat", b"\x00\xffnot a record")
        wait_for(lambda: not first.is_leader, LEASE + 1.0)
        second = wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert second.token is not None and token is not None and second.token > token
    assert zk_admin.get(f"{path}/lock/beat")[0].startswith(b"{")


def test_graceful_handover_is_seen_by_the_watch(zk_server: ZooKeeper, path: str) -> None:
    # retry period 2 s: polling would need ~1.1 s on average; three handovers under 0.5 s
    url = zk_server.url(path)
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
            time.sleep(0.5)
            started = time.monotonic()
            leader.step_down()
            leader = wait_for(lambda old=leader: (lambda e: e if e is not old else None)(leader_of(es)))
            handovers.append(time.monotonic() - started)
    finally:
        for e in es:
            e.stop(timeout=5)
    assert max(handovers) < 0.5, handovers


# --- three servers ----------------------------------------------------------------------


def test_ensemble_server_killed_elections_carry_on(zk_factory, elections) -> None:
    ensemble = zk_factory(3)
    es = elections(ensemble.url(query=SESSION), n=3)  # every candidate lists every server
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        zab_leader = ensemble.leader()
        ensemble.kill(zab_leader)  # the server that orders all writes
        now = wait_for(lambda: leader_of(es), 30)
        assert now.token is not None and token is not None and now.token >= token
        ensemble.kill((zab_leader + 1) % 3)  # quorum lost: nobody may keep leading
        lost = time.monotonic()
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 2.0)
        time.sleep(LEASE)
        assert watch.leaders_between(lost + LEASE + 0.5, time.monotonic()) == set()
    assert not watch.overlaps()
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_ensemble_leaders_server_cut_off(zk_factory, elections) -> None:
    ensemble = zk_factory(3)
    # candidate i reaches only server i: pausing server i cuts candidate i off
    es = elections([ensemble.url(members=[i], query=SESSION) for i in range(3)], n=3)
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        i = es.index(first)
        token = first.token
        cut = time.monotonic()
        ensemble.pause(i)
        try:
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            second = wait_for(lambda: leader_of(es), 30)
            assert second is not first
            assert second.token is not None and token is not None and second.token > token
            time.sleep(LEASE)
        finally:
            ensemble.resume(i)
        time.sleep(LEASE)
    assert not watch.overlaps()
    assert i not in watch.leaders_between(cut + LEASE, time.monotonic())
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def test_asyncio_driver_hands_over_through_the_watch(zk_server: ZooKeeper, path: str) -> None:
    # retry period 2 s: a standby that polled would need about 2 s
    assert asyncio_handover(zk_server.url(path)) < 1.0
