"""Four ``celery beat -S leader`` and one worker: SIGKILL, SIGTERM and SIGSTOP of the leader.

The task runs every second and records the fencing token and identity of the beat that
sent it. Over each failover: no run is sent twice, tokens never go back, a paused leader
sends nothing after it resumes, and the takeover gaps stay within the documented bounds.
The same scenario runs over the default PersistentScheduler (per-host shelve files,
catch-up "skip"), django-celery-beat's DatabaseScheduler on PostgreSQL (over RabbitMQ) and
RedBeat (shared stores, catch-up "once").
"""

from __future__ import annotations

import pytest

from .harness import Deployment, check_runs, failover

pytestmark = pytest.mark.processes

INTERVAL = 1.0
LEASE = 1.0


def assert_failover(dep: Deployment, res: dict) -> None:
    runs = dep.runs()
    report = check_runs(runs, INTERVAL)
    context = f"\nruns: {[(r['identity'], r['token'], round(r['sent'], 3)) for r in runs]}\n{dep.tails()}"
    assert not report.duplicates, f"a scheduled run was sent twice: {report.duplicates}{context}"
    assert not report.token_regressions, f"fencing token went back: {report.token_regressions}{context}"
    assert not report.shared_tokens, f"two beats sent with one token: {report.shared_tokens}{context}"
    assert res["term_rc"] == 0, f"SIGTERMed beat exited with {res['term_rc']}{context}"
    assert "released the lock" in dep.log_text(res["second"]), dep.log_text(res["second"])[-2000:]
    paused_late = [r for r in runs if r["identity"] == res["third"] and r["sent"] > res["t_pause"]]
    assert not paused_late, f"the paused leader sent after it was stopped: {paused_late}{context}"
    # liveness, not speed (the gaps are measured by benchmarks/celery_failover.py): after each
    # fault a new term, with a higher token than any sent before it, sent the task again
    for label, at in (("SIGKILL", res["t_kill"]), ("SIGTERM", res["t_term"]), ("SIGSTOP", res["t_pause"])):
        before = max((r["token"] for r in runs if r["sent"] <= at), default=0)
        assert any(r["token"] > before for r in runs if r["sent"] > at), f"no new term sent after {label}{context}"


def test_persistent_scheduler_failover(deployment):
    """Per-host shelve files: catch-up 'skip' (the default there) never repeats the old leader's run.

    Skipping means the first run comes one interval after the takeover (docs/celery.md; the
    gap is measured by benchmarks/celery_failover.py).
    """
    res = failover(deployment, INTERVAL, LEASE)
    assert "catch-up: skip" in deployment.log_text("beat0")
    assert_failover(deployment, res)


def test_database_scheduler_failover_over_rabbitmq(tmp_path, lock_url, rabbit_broker, postgres_db):
    """django-celery-beat's DatabaseScheduler (shared last_run_at in PostgreSQL), broker RabbitMQ."""
    env = {"CLT_BASE": "django_celery_beat.schedulers:DatabaseScheduler", "CLT_DJANGO_DB": postgres_db}
    with Deployment(tmp_path / "run", lock_url, rabbit_broker, **env) as dep:
        res = failover(dep, INTERVAL, LEASE)
        assert "DatabaseScheduler" in dep.log_text("beat0")
        assert_failover(dep, res)


def test_redbeat_failover(tmp_path, lock_url, redis_broker):
    """RedBeat (shared state in Redis); its own lock is replaced by the election."""
    import uuid

    prefix = f"clt-redbeat-{uuid.uuid4().hex[:8]}:"
    env = {"CLT_BASE": "redbeat.schedulers:RedBeatScheduler", "CLT_REDBEAT_PREFIX": prefix}
    try:
        with Deployment(tmp_path / "run", lock_url, redis_broker, **env) as dep:
            res = failover(dep, INTERVAL, LEASE)
            text = dep.log_text("beat0")
            assert "RedBeatScheduler" in text and "lock ->" not in text, text[:2000]
            assert_failover(dep, res)
    finally:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
