"""Fail closed: nothing is sent unless leadership is confirmed, whatever the backend does.

The lock lives in a private ``redis-server`` that the tests start, kill and start again;
the broker stays up. A broken configuration stops beat at start-up with a message that
names the setting to fix.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from .harness import CELERY, ROOT, Deployment

pytestmark = pytest.mark.processes

LEASE = 1.0


def test_backend_unreachable_at_start_then_killed_mid_run(tmp_path, redis_broker, private_redis):
    with Deployment(tmp_path / "run", private_redis.url, redis_broker) as dep:
        dep.worker("w1")
        beat = dep.beat("beat0")
        dep.wait_log("beat0", "is unavailable", 60)  # up and ticking (start-up time varies with load)
        time.sleep(2.0)
        assert beat.poll() is None, dep.tails()
        assert dep.runs() == [], "beat sent while the lock backend was unreachable"

        private_redis.start()
        t_up = time.time()
        dep.wait_runs(lambda r: len(r) >= 2, 20, "runs once the backend is reachable")
        assert all(r["sent"] > t_up for r in dep.runs())

        private_redis.kill()
        t_down = time.time()
        time.sleep(LEASE + 2.0)
        late = [r for r in dep.runs() if r["sent"] > t_down + LEASE]
        assert not late, f"beat sent after its lease ran out with the backend down: {late}"
        assert beat.poll() is None, "beat must not exit when the backend goes away"
        dep.wait_log("beat0", "stopped leading", 30)

        private_redis.start()
        t_back = time.time()
        dep.wait_runs(lambda r: sum(x["sent"] > t_back for x in r) >= 2, 20, "runs after the backend came back")
        tokens = [r["token"] for r in dep.runs()]
        assert tokens == sorted(tokens)


def run_beat(env: dict, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CELERY, "beat", "-S", "leader", "-l", "info", "-s", env["CLT_SCHEDULE"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "expect"),
    [
        ({"CLT_LOCK_URL": "bogus://nowhere"}, ["leader_election_url", "unknown lock URL scheme 'bogus'"]),
        ({"CLT_LEASE": "1.0", "CLT_RENEW": "2.0"}, ["must be greater than renew_deadline", "leader_election_lease_duration"]),
        ({"CLT_BASE": "no.such.module:Scheduler"}, ["leader_election_scheduler", "cannot be imported"]),
    ],
    ids=["bad-url", "bad-timing", "bad-base"],
)
def test_broken_configuration_stops_beat_with_a_clear_error(tmp_path, redis_broker, lock_url, setting, expect):
    dep = Deployment(tmp_path / "run", lock_url, redis_broker, **setting)
    env = {**dep.env, "CLT_IDENTITY": "beat0", "CLT_SCHEDULE": str(tmp_path / "s.db")}
    done = run_beat(env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    for text in expect:
        assert text in output, output[-3000:]
    assert dep.runs() == []


def test_embedded_beat_never_takes_the_worker_down(tmp_path, redis_broker, private_redis):
    """``worker -B --scheduler leader`` (``-S`` is ``--statedb`` for workers) with the lock backend killed mid-run: the worker keeps consuming."""
    private_redis.start()
    with Deployment(tmp_path / "run", private_redis.url, redis_broker) as dep:
        worker = dep.worker("w1", "-B", "--scheduler", "leader", "-s", str(tmp_path / "embedded.db"))
        dep.wait_runs(lambda r: len(r) >= 2, 30, "runs from the embedded beat")
        private_redis.kill()
        t_down = time.time()
        time.sleep(LEASE + 1.0)
        assert worker.poll() is None, dep.tails()
        assert not [r for r in dep.runs() if r["sent"] > t_down + LEASE], "embedded beat sent without a lease"

        from celery import Celery

        client = Celery("client", broker=redis_broker)
        for i in range(3):
            client.send_task("tests.celery.app.record", args=("direct", i), queue=dep.queue)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(dep.runs("direct")) < 3:
            time.sleep(0.1)
        assert sorted(r["seq"] for r in dep.runs("direct")) == [0, 1, 2], dep.tails()
        assert worker.poll() is None
        client.close()


def test_embedded_beat_with_a_broken_url_leaves_the_worker_running(tmp_path, redis_broker):
    with Deployment(tmp_path / "run", "bogus://nowhere", redis_broker) as dep:
        worker = dep.worker("w1", "-B", "--scheduler", "leader", "-s", str(tmp_path / "embedded.db"))
        dep.wait_log("w1", "ready.", 30)
        from celery import Celery

        client = Celery("client", broker=redis_broker)
        client.send_task("tests.celery.app.record", args=("direct", 7), queue=dep.queue)
        client.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not dep.runs("direct"):
            time.sleep(0.1)
        assert [r["seq"] for r in dep.runs("direct")] == [7], dep.tails()
        assert worker.poll() is None
        # the embedded beat starts beside the worker's pool: under load it may say so only
        # after the worker has run the direct task
        dep.wait_log("w1", "unknown lock URL scheme 'bogus'", 60)
        assert worker.poll() is None
        assert dep.runs() == [], "the embedded beat sent without an election"
