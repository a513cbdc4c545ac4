"""arq: three real ``celery-leader-arq`` workers on Redis; only the leader enqueues cron jobs.

Runs are recorded by the worker that executed them, keyed by arq's job id (one per cron
run). The cron job keeps arq's default ``keep_result=0``: a worker that enqueued a finished
run again would get it accepted, and it would wait in the queue for arq's 60-s "in
progress" key; so the queue itself is checked for old runs too.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from celery_leader.errors import ConfigurationError
from celery_leader.integrations import arq as leader_arq
from tests.queues.harness import REDIS, Fleet, duplicates, kill_stop_term, need_redis, python, runs, wait_runs

pytestmark = pytest.mark.processes


@pytest.fixture
def queue() -> str:
    need_redis()
    return f"cl-arq-{uuid.uuid4().hex[:8]}"


def workers(tmp: Path, queue: str) -> Fleet:
    def argv(ident: str, identity: str) -> list[str]:
        return [python(), "-m", "celery_leader.integrations.arq", "tests.queues.arq_app.WorkerSettings",
                "--leader-url", REDIS, "--leader-identity", identity]  # fmt: skip

    return Fleet(tmp, f"arq.{queue}", argv, {"ARQ_TEST_QUEUE": queue, "ARQ_TEST_LOG": str(tmp / "runs.log")})


def stale_in_queue(queue: str, older_than: float) -> list[str]:
    """Runs still queued whose time is long past: late enqueues blocked by "in progress"."""
    client = redis.Redis.from_url(REDIS)
    try:
        cutoff_ms = (time.time() - older_than) * 1000
        return [m.decode() for m in client.zrangebyscore(queue, 0, cutoff_ms)]
    finally:
        client.close()


def test_failover_kill_stop_term_no_duplicates(tmp_path: Path, queue: str) -> None:
    fleet = workers(tmp_path, queue).start(3)
    log = tmp_path / "runs.log"

    def nothing_stale() -> None:  # plain arq would enqueue the runs it missed while paused
        assert stale_in_queue(queue, 3.0) == []

    kill_stop_term(fleet, log, runs_while_paused=3, after_wake=nothing_stale)
    records = runs(log)
    assert not duplicates(records), f"runs done twice: {duplicates(records)}\n{fleet.output()}"
    assert stale_in_queue(queue, 3.0) == []
    assert "released the lock" in fleet.output()


def test_settings_and_bad_input(tmp_path: Path, queue: str) -> None:
    from tests.queues.arq_app import tick

    class Settings:
        queue_name = queue
        functions = [tick]
        leader_url = REDIS
        leader_lease_duration = 1.0
        leader_renew_deadline = 0.6
        leader_retry_period = 0.2

    # arq's Worker takes the current event loop when it is built (as arq's own create_worker
    # does); an earlier asyncio.run() in this process leaves none, so give it one
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = leader_arq.create_leader_worker(Settings)
        assert worker.leader.name == f"arq.{queue}" and worker.leader.timing.lease_duration == 1.0
        assert worker.election is None  # nothing started before main()
        Settings.leader_renew_deadline = 2.0
        with pytest.raises(ConfigurationError, match="lease_duration"):
            leader_arq.create_leader_worker(Settings)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    for args, expect in (
        (["tests.queues.arq_app.WorkerSettings", "--leader-url", "nope://admin:hunter2@127.0.0.1/"], "nope"),
        (["no_such_module.Settings", "--leader-url", REDIS], "cannot import"),
    ):
        proc = subprocess.run([python(), "-m", "celery_leader.integrations.arq", *args], capture_output=True,
                              text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert expect in proc.stderr and "Traceback" not in proc.stderr
        assert "hunter2" not in proc.stderr + proc.stdout


@pytest.mark.soak
@pytest.mark.skipif(__import__("os").environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
def test_control_plain_arq_enqueues_missed_runs_again(tmp_path: Path, queue: str) -> None:
    """The gap the integration closes: plain arq workers, one paused past a few runs."""
    fleet = Fleet(tmp_path, "unused", lambda ident, identity: [python(), "-m", "arq", "tests.queues.arq_app.WorkerSettings"],
                  {"ARQ_TEST_QUEUE": queue, "ARQ_TEST_LOG": str(tmp_path / "runs.log")})  # fmt: skip
    fleet.start(3)
    try:
        wait_runs(tmp_path / "runs.log", 3)
        fleet.signal("c1", signal.SIGSTOP)
        time.sleep(4.0)
        fleet.signal("c1", signal.SIGCONT)
        wait_runs(tmp_path / "runs.log", 3)
        assert stale_in_queue(queue, 3.0), "plain arq no longer re-enqueues missed runs: revisit docs/integrations.md"
    finally:
        fleet.stop()
