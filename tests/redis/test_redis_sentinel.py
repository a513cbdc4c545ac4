"""Through Sentinel: a primary, a replica and a sentinel started here, and a forced failover."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_leader import Election
from celery_leader.backends.redis import RedisBackend
from celery_leader.lock import BackendUnavailable
from celery_leader.testing import sample_record
from tests.elections import LEASE, RENEW, RETRY, Watch, wait_for
from tests.servers import free_port, need_binary, stop_process, unavailable, wait_for_port

from .conftest import RedisServer

MASTER = "mymaster"


class SentinelSetup:
    def __init__(self, primary: RedisServer, replica: RedisServer, port: int, proc: subprocess.Popen) -> None:
        self.primary, self.replica, self.port, self.proc = primary, replica, port, proc
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{MASTER}/0"

    def master_port(self) -> int:
        return int(self.client.sentinel_get_master_addr_by_name(MASTER)[1])


@pytest.fixture
def sentinel(redis_server_factory, tmp_path: Path) -> Iterator[SentinelSetup]:
    binary = need_binary("redis-sentinel", "apt-get install redis-sentinel")
    primary: RedisServer = redis_server_factory(name="primary")
    replica: RedisServer = redis_server_factory("--replicaof", "127.0.0.1", str(primary.port), name="replica")
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {tmp_path}\n"
        f"logfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 4000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for_port(port, 15):
            unavailable(f"redis-sentinel did not listen on 127.0.0.1:{port}")
        setup = SentinelSetup(primary, replica, port, proc)
        # the sentinel must know the replica before it can fail over to it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            replicas = setup.client.sentinel_slaves(MASTER)
            if any(r.get("is_slave") and not r.get("is_sdown") and r.get("master-link-status") == "ok" for r in replicas):
                break
            time.sleep(0.1)
        else:
            unavailable("the sentinel did not discover the replica within 20 s")
        yield setup
    finally:
        stop_process(proc)


def test_sentinel_elects_and_survives_a_forced_failover(sentinel: SentinelSetup) -> None:
    # (one test, because the sentinel takes seconds to discover its replica)
    backend = RedisBackend.from_url(sentinel.url + "?prefix=s:")
    try:
        backend.check(5.0)
        lock = backend.lock("x")
        v = lock.create(sample_record(), 5.0)
        got = lock.get(5.0)
        assert got is not None and got.version == v
    finally:
        backend.close()
    es = [
        Election("beat", url=sentinel.url, identity=f"node{i}", lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
        for i in range(2)
    ]
    for e in es:
        e.start()
    try:
        with Watch(es) as watch:
            first = wait_for(lambda: next((e for e in es if e.is_leader), None))
            token = first.token
            old_port = sentinel.master_port()
            assert old_port == sentinel.primary.port
            # let the replica catch up, so that this failover loses nothing
            sentinel.primary.client().execute_command("WAIT", 1, 2000)
            deadline = time.monotonic() + 20
            while True:
                try:
                    sentinel.client.execute_command("SENTINEL", "FAILOVER", MASTER)
                    break
                except redis.ResponseError:  # NOGOODSLAVE / INPROG right after start
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            wait_for(lambda: sentinel.master_port() == sentinel.replica.port, 20)
            switched = time.monotonic()
            # leadership continues through the new primary
            wait_for(lambda: any(e.is_leader for e in es) and time.monotonic() > switched + 3 * LEASE, 20)
            later = next(e for e in es if e.is_leader)
            assert later.token is not None and token is not None and later.token >= token
        assert not watch.overlaps()
        tokens = watch.tokens()
        assert tokens == sorted(tokens)
        raw = sentinel.replica.client().get("celery-leader:lock:beat")
        assert raw is not None and later.identity.encode() in raw, "writes do not reach the new primary"
    finally:
        for e in es:
            e.stop(timeout=5)


def test_no_reachable_sentinel_is_unavailable() -> None:
    backend = RedisBackend.from_url(f"redis+sentinel://127.0.0.1:{free_port()}/{MASTER}/0?socket_timeout=0.5")
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.lock("x").get(60.0)
        assert time.monotonic() - started < 10.0  # refused at once, not after the 60 s timeout
    finally:
        backend.close()
