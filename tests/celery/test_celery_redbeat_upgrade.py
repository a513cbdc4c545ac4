"""Rolling upgrade from plain RedBeat: a plain RedBeat beat and a ``-S leader`` beat (wrapping
RedBeat) never send together, in either order, because the leader also holds RedBeat's own
lock key while it leads (``celery_leader.integrations.celery.redbeat``)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from .harness import CELERY, Deployment

pytestmark = pytest.mark.processes

INTERVAL = 0.3


def senders(dep: Deployment) -> list[str]:
    """Who sent each run, in the order the worker ran them: "plain" or "leader:<token>"."""
    out = []
    if dep.record.exists():
        for line in dep.record.read_text().splitlines():
            run = json.loads(line)
            out.append("plain" if run["token"] is None else f"leader:{run['token']}")
    return out


def phases(seq: list[str]) -> list[str]:
    """Collapse runs of the same sender: ["plain", "leader:1", "plain"]."""
    out: list[str] = []
    for s in seq:
        if not out or out[-1] != s:
            out.append(s)
    return out


def wait_for(predicate, timeout: float, what: str, dep: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}; senders {phases(senders(dep))}\n{dep.tails()}")
        time.sleep(0.05)


def test_plain_redbeat_and_leader_beat_exclude_each_other(tmp_path, lock_url, redis_broker):
    prefix = f"clt-rbu-{uuid.uuid4().hex[:8]}"
    env = {"CLT_BASE": "redbeat.schedulers:RedBeatScheduler", "CLT_REDBEAT_PREFIX": prefix,
           "CLT_INTERVAL": str(INTERVAL), "CLT_REDBEAT_LOCK_TIMEOUT": "3"}  # fmt: skip
    try:
        with Deployment(tmp_path / "run", lock_url, redis_broker, **env) as dep:
            dep.worker("w")

            def plain(name: str) -> None:
                argv = [*CELERY, "beat", "-S", "redbeat.schedulers:RedBeatScheduler", "-l", "info"]
                dep._spawn(name, argv, dep.env)

            plain("old")  # the old host, not upgraded yet
            wait_for(lambda: senders(dep).count("plain") >= 3, 40, "the plain beat sends", dep)
            dep.beat("new")  # the first upgraded host: elected, but RedBeat's lock is taken
            dep.wait_log("new", "held by a beat without celery-leader", timeout=40)
            mark = len(senders(dep))
            wait_for(lambda: len(senders(dep)) >= mark + 5, 30, "more runs", dep)
            assert set(senders(dep)) == {"plain"}, "the leader beat sent while a plain RedBeat beat held its lock"
            assert dep.terminate("old") == 0  # the old host is stopped: it releases RedBeat's lock
            wait_for(lambda: senders(dep)[-3:] == ["leader:1"] * 3, 40, "the leader beat takes over", dep)
            plain("late")  # a plain beat started again (a rollback): it must wait
            time.sleep(1.0)
            mark = len(senders(dep))
            wait_for(lambda: len(senders(dep)) >= mark + 5, 30, "more runs", dep)
            assert senders(dep)[mark:] == ["leader:1"] * (len(senders(dep)) - mark)
            assert "Acquired lock" not in dep.log_text("late")
            dep.terminate("new")  # the leader beat stops: it gives RedBeat's lock back
            dep.wait_log("late", "Acquired lock", timeout=40)
            wait_for(lambda: senders(dep)[-3:] == ["plain"] * 3, 40, "the plain beat sends again", dep)
        assert phases(senders(dep)) == ["plain", "leader:1", "plain"], phases(senders(dep))
    finally:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
