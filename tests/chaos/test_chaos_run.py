"""A bounded chaos run (the full one: ``python -m benchmarks chaos``)."""

from __future__ import annotations

import os
import shutil

import pytest

from benchmarks.chaos import run_chaos
from tests.servers import unavailable

DURATION = float(os.environ.get("CELERY_LEADER_CHAOS_SECONDS", "20"))


def _check(result) -> None:
    result.report.assert_safe()
    assert result.faults, "no fault was injected"
    over = [(f.kind, round(f.leaderless, 3), f.bound) for f in result.violations]
    assert not over, f"time without a leader exceeded the design's bound: {over} (seed {result.seed})"
    assert len(result.report.intervals) >= len(result.faults) // 2


@pytest.mark.processes
def test_chaos_file_backend(tmp_path):
    _check(run_chaos("file", DURATION, workdir=tmp_path))


@pytest.mark.processes
def test_chaos_redis_backend(tmp_path):
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    result = run_chaos("redis", DURATION, workdir=tmp_path)
    _check(result)
    kinds = {f.kind for f in result.faults}
    assert kinds & {"server", "blackhole", "delay"} or len(result.faults) < 4


@pytest.mark.processes
def test_chaos_postgresql_backend(tmp_path):
    psycopg = pytest.importorskip("psycopg", reason="pip install 'celery-leader[postgresql]'")
    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    result = run_chaos("postgresql", DURATION, workdir=tmp_path)
    _check(result)
    kinds = {f.kind for f in result.faults}
    assert kinds & {"sessions", "blackhole", "delay"} or len(result.faults) < 4


# etcd and ZooKeeper start three-member ensembles (ZooKeeper: three JVMs): long enough to
# keep out of the default run; CELERY_LEADER_SOAK=1 runs them.
_SOAK = [
    pytest.mark.soak,
    pytest.mark.processes,
    pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1"),
]


@pytest.mark.parametrize("backend", [pytest.param("etcd", marks=_SOAK), pytest.param("zookeeper", marks=_SOAK)])
def test_chaos_consensus_backends(tmp_path, backend: str) -> None:
    result = run_chaos(backend, DURATION, workdir=tmp_path)
    _check(result)
    kinds = {f.kind for f in result.faults}
    assert kinds & {"member", "blackhole", "delay"} or len(result.faults) < 4
