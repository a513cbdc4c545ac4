"""RQ's cron scheduler, elected: three real ``celery-leader-rq cron`` processes and a worker.

The leader is SIGKILLed, then SIGTERMed, then SIGSTOPped (and later resumed). Proof:
every slot is enqueued once (a new term's first enqueue comes at least an interval after
the previous term's last, and no two enqueues are closer than half the interval), fencing
tokens never go backwards in enqueue order (so the resumed, deposed leader enqueued
nothing), each failover is followed by an enqueue from a new term (a higher token) by
another process, and the worker ran every job once with its token in ``job.meta``. How
fast a takeover is belongs to ``benchmarks/rq.py`` (``takeover_s``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job

from .harness import LEADER, REDIS_URL, RQ, TIMING, Fleet, wait_for

pytestmark = pytest.mark.processes

INTERVAL = 1
#: float scores: a new term schedules its first run from the stored score plus the interval
ROUNDING = 0.001


def cron_config(path: Path, fleet: Fleet) -> Path:
    config = path / f"cron_{fleet.tag.replace('-', '_')}.py"
    config.write_text(
        "from rq import cron\n"
        "from tests.rq.jobs import record\n"
        f"cron.register(record, {fleet.queue!r}, args=({str(fleet.record)!r},), interval={INTERVAL}, name={fleet.tag!r})\n"
    )
    return config


def enqueues(fleet: Fleet) -> list[tuple[float, str, int | None]]:
    """(enqueued at, job id, token) for every job the cron job enqueued, oldest first."""
    entries = fleet.redis.zrange(f"rq:cron_job:{fleet.tag}:jobs", 0, -1, withscores=True)
    ids = [raw.decode() for raw, _ in entries]
    jobs = Job.fetch_many(ids, connection=fleet.redis) if ids else []
    out = []
    for (raw, score), job in zip(entries, jobs):
        token = job.meta.get("celery_leader_token") if job is not None else None
        out.append((score, raw.decode(), token))
    return out


def check_once_per_slot(rows: list[tuple[float, str, int | None]]) -> None:
    times = [t for t, _, _ in rows]
    close = [(a, b) for a, b in zip(times, times[1:]) if b - a < INTERVAL / 2]
    assert not close, f"duplicate enqueues (closer than half the interval): {close}"
    tokens = [tok for _, _, tok in rows]
    assert all(tok is not None for tok in tokens), "a job was enqueued without a fencing token"
    assert tokens == sorted(tokens), f"tokens went backwards (a deposed leader enqueued): {tokens}"
    # a new term reloads the last run from Redis: its first slot is the one after it
    rerun = [(a, b) for a, b in zip(rows, rows[1:]) if b[2] != a[2] and b[0] - a[0] < INTERVAL - ROUNDING]
    assert not rerun, f"a new term re-ran the previous term's last slot: {rerun}"


@pytest.fixture
def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path, "cron")
    yield fleet
    fleet.cleanup()


def candidate(fleet: Fleet, config: Path, i: int, *extra: str) -> str:
    name = f"c{i}"
    fleet.spawn(name, LEADER + ["cron", "--url", REDIS_URL, "--leader-name", f"{fleet.tag}.cron",
                                "--identity", name, *TIMING, *extra, str(config)])
    return name


def test_three_cron_schedulers_one_enqueue_per_slot_through_kill_term_and_stop(fleet: Fleet, tmp_path: Path) -> None:
    config = cron_config(tmp_path, fleet)
    election = f"{fleet.tag}.cron"
    fleet.elections.add(election)
    fleet.spawn("worker", RQ + ["worker", "--url", REDIS_URL, "-w", "rq.SimpleWorker", fleet.queue])
    started = [candidate(fleet, config, i) for i in range(3)]
    wait_for("three enqueues", lambda: len(enqueues(fleet)) >= 3, timeout=60)

    takeovers: dict[str, float] = {}
    stopped = None
    for n, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP)):
        leader = str(wait_for("a leader", lambda: fleet.holder(election)))
        old_token = max(tok for _, _, tok in enqueues(fleet))
        at = time.time()
        fleet.signal(leader, sig)
        wait_for("a new term enqueuing", lambda old=old_token: any(tok > old for _, _, tok in enqueues(fleet)), timeout=60)
        first = min(t for t, _, tok in enqueues(fleet) if tok > old_token)
        takeovers[signal.Signals(sig).name] = first - at  # shown, not judged: benchmarks/rq.py times it
        assert fleet.holder(election) != leader
        if sig == signal.SIGSTOP:
            stopped = leader
        else:
            fleet.wait_dead(leader)
            started.append(candidate(fleet, config, 3 + n))

    # the paused ex-leader wakes up believing nothing; it must find its term over
    assert stopped is not None
    fleet.signal(stopped, signal.SIGCONT)
    count = len(enqueues(fleet))
    wait_for("more enqueues after the resume", lambda: len(enqueues(fleet)) >= count + 3, timeout=60)
    fleet.signal("c3", signal.SIGTERM)  # a standby leaving changes nothing
    rows = enqueues(fleet)
    check_once_per_slot(rows)
    assert len({tok for _, _, tok in rows}) >= 4, "three failovers, but fewer than four terms enqueued"
    # the worker ran every enqueued job, each with the token it was enqueued with
    wanted = {job_id: tok for _, job_id, tok in rows}
    wait_for("the worker to run every job", lambda: wanted.keys() <= {r["id"] for r in fleet.runs()}, timeout=60)
    ran = {r["id"]: r["token"] for r in fleet.runs()}
    assert all(ran[job_id] == tok for job_id, tok in wanted.items())
    assert len(fleet.runs()) == len({r["id"] for r in fleet.runs()})
    print("takeovers", takeovers, "enqueues", len(rows), "tokens", sorted({tok for _, _, tok in rows}))


def test_bad_configuration_is_one_line_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "cron_cfg.py"
    config.write_text("from rq import cron\n")
    argv = LEADER + ["cron", "--url", REDIS_URL, "--leader-url", "redis://user:s3cret@127.0.0.1:6379/0?bogus=1", str(config)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "bogus" in result.stderr and result.stderr.strip().startswith("Error:")

    bad_timing = LEADER + ["cron", "--url", REDIS_URL, "--lease-duration", "1", "--renew-deadline", "2", str(config)]
    result = subprocess.run(bad_timing, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "LEASE_DURATION" in result.stderr



def test_scheduler_without_rq_scheduler_installed_is_one_line() -> None:
    """rq-scheduler is an extra that cannot share django-celery-beat's environment: its absence
    is a one-line error naming the package, exit 2, not an ImportError traceback."""
    code = ("import sys; sys.modules['rq_scheduler'] = None\n"  # as if it were not installed
            "from celery_leader.integrations.rq.cli import main\n"
            "main(['scheduler', '--burst', '--url', 'redis://:hunter2@127.0.0.1:6379/0'], prog_name='celery-leader-rq')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error:") and "pip install rq-scheduler" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stdout + result.stderr

if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_default_lock_is_rqs_own_redis_with_its_password_never_shown(tmp_path: Path) -> None:
    """No lock URL anywhere: the lock goes to RQ's Redis (password included), and no log line shows it."""
    import shutil

    from tests.servers import free_port, running, unavailable

    if shutil.which("redis-server") is None:
        unavailable("redis-server not found")
    port, secret = free_port(), "s3cret-Pw/x"
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", secret]
    with running(argv, port):
        fleet = Fleet(tmp_path, "pw", redis_url=f"redis://:{secret.replace('/', '%2F')}@127.0.0.1:{port}/0")
        try:
            config = cron_config(tmp_path, fleet)
            fleet.spawn("c0", LEADER + ["cron", "--url", fleet.redis_url, *TIMING, str(config)])
            wait_for("an enqueue", lambda: len(enqueues(fleet)) >= 1, timeout=60)
            assert fleet.holder("rq.cron")  # the default name, in RQ's (password-protected) Redis
            fleet.signal("c0", signal.SIGTERM)
            fleet.wait_dead("c0")
            text = fleet.log("c0")
            assert "standing for rq.cron on redis://:***@127.0.0.1" in text
            assert secret not in text and "s3cret" not in text
        finally:
            fleet.elections.add("rq.cron")
            fleet.cleanup()
