"""Bounded chaos runs of every backend (the long ones: ``python -m benchmarks chaos``).

Each run draws its faults from a seeded schedule (the seed is in every failure message;
``CELERY_LEADER_CHAOS_SEED`` replays one). Safety is asserted exactly: no overlapping
terms, no token regression. The time without a leader after a fault depends on the load
of the machine; it is asserted only with generous slack (four times the design's bound
plus 10 s) and otherwise left to the benchmark's tables.

The default run covers the backends whose servers start in a second or two, a few faults
each (git-daemon, git-http and django-mariadb in turn, one a day: each shares its code with
git-file or django-postgresql); the three-member ensembles (etcd, ZooKeeper's JVMs), SeaweedFS and five serf agents
run with ``CELERY_LEADER_SOAK=1``.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import random
import shutil

import pytest

from benchmarks.chaos import ChaosResult, run_chaos
from tests.servers import unavailable

SECONDS = float(os.environ.get("CELERY_LEADER_CHAOS_SECONDS", "6"))
SOAK = os.environ.get("CELERY_LEADER_SOAK") == "1"
#: a gap is a failure only past SLACK_FACTOR * bound + SLACK_SECONDS (a loaded machine
#: stretches gaps; the benchmark's tables report every gap against the bound itself)
SLACK_FACTOR, SLACK_SECONDS = 4, 10.0

pytestmark = pytest.mark.processes


def _seed() -> int:
    fixed = os.environ.get("CELERY_LEADER_CHAOS_SEED")
    return int(fixed) if fixed else random.randrange(1 << 30)


def _check(result: ChaosResult) -> None:
    where = f"(backend {result.backend}, seed {result.seed}; replay with CELERY_LEADER_CHAOS_SEED={result.seed})"
    assert result.faults, f"no fault was injected {where}"
    try:
        result.report.assert_safe()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{where}") from None
    far = [(f.kind, round(f.leaderless, 3), f.bound) for f in result.faults
           if f.bound is not None and f.leaderless > SLACK_FACTOR * f.bound + SLACK_SECONDS]  # fmt: skip
    assert not far, f"time without a leader far over the design's bound: {far} {where}"
    if {f.kind for f in result.faults} & {"kill", "term"}:  # those always hand over
        assert len(result.report.intervals) >= 2, f"{result.report.summary()} {where}"


def _need(backend: str) -> None:
    binaries = {"redis": "redis-server", "etcd": "etcd", "zookeeper": "java", "gossip-3": "serf", "gossip-5": "serf",
                "git-file": "git", "git-daemon": "git", "git-http": "git", "s3-seaweedfs": "weed"}  # fmt: skip
    modules = {"postgresql": "psycopg", "django-postgresql": "psycopg2", "django-mariadb": "pymysql",
               "s3-moto": "moto", "s3-seaweedfs": "boto3", "kubernetes": "kubernetes"}  # fmt: skip
    if backend in binaries and shutil.which(binaries[backend]) is None:
        unavailable(f"{binaries[backend]} is not installed (needed by the {backend} chaos run)")
    if backend in modules and importlib.util.find_spec(modules[backend]) is None:
        unavailable(f"{modules[backend]} is not installed (needed by the {backend} chaos run)")
    if backend.startswith("gossip") and os.geteuid() != 0:
        unavailable("the gossip chaos run partitions serf agents with iptables owner rules: it needs root")


_soak = [pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="soak run: set CELERY_LEADER_SOAK=1")]
CHEAP = ["file", "redis"]
#: one of these a day in the default run (the whole suite stays under its time budget; each
#: backend's own fault tests run every time); all of them with CELERY_LEADER_SOAK=1 or
#: CELERY_LEADER_CHAOS_ALL=1
ROTATING = ["postgresql", "kubernetes", "s3-moto", "git-file", "django-postgresql", "gossip-3",
            "git-daemon", "git-http", "django-mariadb"]  # fmt: skip
SLOW = ["etcd", "zookeeper", "s3-seaweedfs", "gossip-5"]


def _rotation_skips(backend: str) -> None:
    if SOAK or os.environ.get("CELERY_LEADER_CHAOS_ALL") == "1" or backend not in ROTATING:
        return
    today = ROTATING[datetime.date.today().toordinal() % len(ROTATING)]
    if backend != today:
        pytest.skip(f"rotating chaos run: {today} today; CELERY_LEADER_CHAOS_ALL=1 runs every backend")


@pytest.mark.parametrize("backend", [*CHEAP, *ROTATING, *(pytest.param(b, marks=_soak) for b in SLOW)])
def test_chaos_run(tmp_path, backend: str) -> None:
    _rotation_skips(backend)
    _need(backend)
    seconds = SECONDS * (4 if backend in SLOW else 1) if SOAK else SECONDS
    result = run_chaos(backend, seconds, _seed(), workdir=tmp_path)
    _check(result)


INTEGRATIONS = ["celery-beat", "apscheduler", pytest.param("runasleader", marks=_soak),
                *(pytest.param(k, marks=_soak) for k in ("rq-cron", "rq-worker", "rq-scheduler"))]  # fmt: skip


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_chaos_integration(tmp_path, integration: str) -> None:
    """Failovers of the leading scheduler; duplicates and token order counted by the workers."""
    from benchmarks.chaos_integrations import run_integration
    from tests.servers import port_open

    if integration == "runasleader":
        _need("django-postgresql")
        _check(run_chaos("runasleader", SECONDS * 4, _seed(), workdir=tmp_path))
        return
    if not port_open(6379):
        unavailable("Redis is not listening on 127.0.0.1:6379 (broker and lock of the integration runs)")
    pytest.importorskip({"celery-beat": "celery", "apscheduler": "apscheduler"}.get(integration, "rq"))
    if integration.startswith("rq") and shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (the RQ runs start a private one)")
    seed = _seed()
    got = run_integration(integration, SECONDS * (4 if SOAK else 1), seed, tmp_path)
    where = f"({integration}, seed {seed}; replay with CELERY_LEADER_CHAOS_SEED={seed})"
    assert got["faults"], f"no fault was injected {where}"
    assert got["failovers"] >= 1, f"no failover {where}"
    assert got["duplicates"] == 0, f"{got['duplicates']} duplicate runs {where}"
    assert got["token_regressions"] == 0, f"{got['token_regressions']} token regressions {where}"
    assert not got.get("late_sends"), f"{got['late_sends']} sends by a deposed leader {where}"
    far = [f for f in got["faults"] if f["leaderless"] > SLACK_FACTOR * f["bound"] + SLACK_SECONDS]
    assert not far, f"time without a run far over the design's bound: {far} {where}"
