"""``runasleader`` as real processes on one SQLite database: one runs, --skip exits 0,
SIGKILL of the leader hands over, losing the lease interrupts the command (exit 3)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connections

from celery_leader.testing.cluster import check_intervals, read_intervals

from .conftest import subprocess_env

pytestmark = pytest.mark.processes


def manage(*argv: str) -> list[str]:
    return [sys.executable, "-m", "django", *argv]


def runasleader(name: str, node: str, log: Path, *extra: str) -> list[str]:
    return manage("runasleader", "--name", name, "--identity", node, *extra, "work", str(log), "--node", node)


def starts(log: Path) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev["e"] == "start":
            out.append(ev)
    return out


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def procs(sqlite_alias):
    started: list[subprocess.Popen] = []

    def spawn(argv: list[str], out: Path) -> subprocess.Popen:
        fh = open(out, "wb")
        proc = subprocess.Popen(argv, env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(10)


def test_one_of_three_runs_and_sigkill_hands_over(procs, tmp_path):
    name = "run-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    nodes = [procs(runasleader(name, f"node{i}", log), tmp_path / f"node{i}.out") for i in range(3)]
    first = wait_for(lambda: starts(log), 30, "a first leader")[0]
    time.sleep(1.5)  # more than a lease: the others would have started if they could
    assert len(starts(log)) == 1, starts(log)
    assert all(p.poll() is None for p in nodes), "standbys must keep waiting"
    leader = int(first["node"][-1])
    nodes[leader].kill()
    second = wait_for(lambda: starts(log)[1:], 30, "a new leader after SIGKILL")[0]
    assert second["node"] != first["node"]
    assert second["token"] > first["token"]
    time.sleep(0.5)
    assert len(starts(log)) == 2
    report = check_intervals(read_intervals([log]))
    report.assert_safe()
    # the killed leader's last beat came before the new leader's start
    assert report.gaps and report.gaps[0][2] > 0


def test_sigterm_unwinds_the_command_and_releases_at_once(procs, tmp_path):
    name = "term-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    nodes = [procs(runasleader(name, f"node{i}", log), tmp_path / f"node{i}.out") for i in range(2)]
    first = wait_for(lambda: starts(log), 30, "a first leader")[0]
    leader = nodes[int(first["node"][-1])]
    leader.terminate()
    assert leader.wait(20) == 143
    second = wait_for(lambda: starts(log)[1:], 30, "the standby")[0]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    stop = next(ev for ev in events if ev["e"] == "stop" and ev["node"] == first["node"])
    assert stop["t"] <= second["t"]
    # released, not left to expire: the leader's own log says so (a timed bound on the
    # handover would depend on how loaded the machine is; benchmarks measure it)
    out = (tmp_path / f"{first['node']}.out").read_text()
    assert f"{name}: released the lock" in out, out
    check_intervals(read_intervals([log])).assert_safe()


def test_skip_exits_zero_while_another_leads(procs, tmp_path):
    name = "skip-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    procs(runasleader(name, "leader", log), tmp_path / "leader.out")
    wait_for(lambda: starts(log), 30, "the leader")
    skippers = [procs(runasleader(name, f"cron{i}", log, "--skip"), tmp_path / f"cron{i}.out") for i in range(2)]
    for i, proc in enumerate(skippers):
        assert proc.wait(30) == 0, (tmp_path / f"cron{i}.out").read_text()
        assert "skipped work" in (tmp_path / f"cron{i}.out").read_text()
    assert [ev["node"] for ev in starts(log)] == ["leader"]


def test_skip_runs_when_nobody_leads(procs, tmp_path):
    name = "skip-free-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    proc = procs(runasleader(name, "cron", log, "--skip") + ["--seconds", "0.2"], tmp_path / "cron.out")
    assert proc.wait(30) == 0, (tmp_path / "cron.out").read_text()
    assert [ev["node"] for ev in starts(log)] == ["cron"]


def test_skip_takes_over_a_dead_holders_lease(procs, tmp_path):
    name = "skip-dead-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    dead = procs(runasleader(name, "dead", log), tmp_path / "dead.out")
    wait_for(lambda: starts(log), 30, "the first leader")
    dead.kill()
    dead.wait(10)
    cron = procs(runasleader(name, "cron", log, "--skip") + ["--seconds", "0.1"], tmp_path / "cron.out")
    assert cron.wait(30) == 0, (tmp_path / "cron.out").read_text()
    assert [ev["node"] for ev in starts(log)] == ["dead", "cron"]
    assert starts(log)[1]["token"] > starts(log)[0]["token"]


def test_hold_makes_later_cron_instances_skip_a_fast_job(procs, tmp_path):
    name = "hold-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    # a hold far longer than the late instance can take to start, even on a loaded machine;
    # the early one is then stopped with SIGTERM (it releases) instead of waited for
    first = procs(runasleader(name, "early", log, "--skip", "--hold", "120") + ["--seconds", "0"], tmp_path / "early.out")
    wait_for(lambda: starts(log), 30, "the early instance")
    time.sleep(0.3)  # another host's clock is a little behind: its cron fires later
    late = procs(runasleader(name, "late", log, "--skip") + ["--seconds", "0"], tmp_path / "late.out")
    assert late.wait(60) == 0
    assert "skipped" in (tmp_path / "late.out").read_text()
    assert first.poll() is None, "the early instance stopped holding before the late one decided"
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    assert [ev["node"] for ev in starts(log)] == ["early"]


def test_lost_lease_interrupts_the_command_and_exits_3(procs, tmp_path):
    name = "lost-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    proc = procs(runasleader(name, "victim", log), tmp_path / "victim.out")
    wait_for(lambda: starts(log), 30, "the leader")
    # the database stops answering writes for longer than RENEW_DEADLINE (0.6 s)
    held = sqlite3.connect(connections.settings["default"]["NAME"], isolation_level=None)
    held.execute("BEGIN EXCLUSIVE")
    blocked_at = time.time()
    try:
        code = proc.wait(20)
    finally:
        held.rollback()
        held.close()
    out = (tmp_path / "victim.out").read_text()
    assert code == 3, out
    # interrupted (LeadershipLost raised in the command) when the loss is seen at renew_deadline;
    # exited at once when it is only seen at the lease deadline itself
    assert "interrupted" in out or "still running at the lease deadline" in out, out
    events = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    assert "stop" in [ev["e"] for ev in events] or "still running" in out
    # the work ended within the lease (1 s) of the last renewal, which was before the block
    assert events[-1]["t"] - blocked_at < 1.0


def test_a_command_that_swallows_the_interrupt_is_stopped_at_the_lease_deadline(procs, tmp_path):
    name = "stubborn-" + uuid.uuid4().hex[:8]
    log = tmp_path / "stubborn.log"
    proc = procs(manage("runasleader", "--name", name, "stubborn", str(log)), tmp_path / "out")
    wait_for(lambda: log.exists() and log.stat().st_size > 0, 30, "the command to run")
    held = sqlite3.connect(connections.settings["default"]["NAME"], isolation_level=None)
    held.execute("BEGIN EXCLUSIVE")
    blocked_at = time.time()
    try:
        code = proc.wait(20)
    finally:
        held.rollback()
        held.close()
    out = (tmp_path / "out").read_text()
    assert code == 3, out
    assert "still running at the lease deadline" in out
    events = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    # nothing ran after the lease (1 s) could have been taken by someone else
    assert events[-1]["t"] - blocked_at < 1.0


def test_wait_timeout_exits_4(procs, tmp_path):
    name = "timeout-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    procs(runasleader(name, "leader", log), tmp_path / "leader.out")
    wait_for(lambda: starts(log), 30, "the leader")
    waiter = procs(runasleader(name, "waiter", log, "--wait-timeout", "1"), tmp_path / "waiter.out")
    assert waiter.wait(30) == 4
    assert [ev["node"] for ev in starts(log)] == ["leader"]


def test_command_failure_is_the_exit_status_and_releases(procs, tmp_path):
    name = "fail-" + uuid.uuid4().hex[:8]
    proc = procs(manage("runasleader", "--name", name, "nosuchcommand"), tmp_path / "out")
    assert proc.wait(30) == 1
    assert "Unknown command" in (tmp_path / "out").read_text()
    from django_leader.status import lease_rows

    rows = lease_rows("default", name)
    assert rows and rows[0]["state"] == "free", rows


def stops(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [ev["node"] for ev in map(json.loads, log.read_text().splitlines()) if ev["e"] == "stop"]


@pytest.mark.parametrize("mode", [["--slot", "2026-11-29"], ["--once-per", "1d"]])
def test_once_per_three_cron_hosts_run_the_job_once(procs, tmp_path, mode):
    name = "once-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    first = procs(runasleader(name, "a", log, *mode) + ["--seconds", "1.5"], tmp_path / "a.out")
    wait_for(lambda: starts(log), 30, "the first host")
    second = procs(runasleader(name, "b", log, *mode) + ["--seconds", "0"], tmp_path / "b.out")  # during the run
    assert first.wait(30) == 0, (tmp_path / "a.out").read_text()
    third = procs(runasleader(name, "c", log, *mode) + ["--seconds", "0"], tmp_path / "c.out")  # after it
    for node, proc in (("b", second), ("c", third)):
        assert proc.wait(30) == 0, (tmp_path / f"{node}.out").read_text()
        assert "is already done" in (tmp_path / f"{node}.out").read_text()
    assert [ev["node"] for ev in starts(log)] == ["a"]


def test_once_per_host_killed_mid_run_leaves_the_slot_to_the_next(procs, tmp_path):
    name = "once-kill-" + uuid.uuid4().hex[:8]
    log = tmp_path / "work.log"
    dead = procs(runasleader(name, "dead", log, "--slot", "s"), tmp_path / "dead.out")
    wait_for(lambda: starts(log), 30, "the first host")
    standby = procs(runasleader(name, "next", log, "--slot", "s") + ["--seconds", "0.1"], tmp_path / "next.out")
    time.sleep(0.3)
    dead.kill()
    assert standby.wait(30) == 0, (tmp_path / "next.out").read_text()
    later = procs(runasleader(name, "later", log, "--slot", "s") + ["--seconds", "0"], tmp_path / "later.out")
    assert later.wait(30) == 0
    assert [ev["node"] for ev in starts(log)] == ["dead", "next"]
    assert stops(log) == ["next"]


def test_once_per_bad_period_is_a_one_line_error(procs, tmp_path):
    out = subprocess.run(manage("runasleader", "--once-per", "soon", "work", str(tmp_path / "log")),
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not a duration" in out.stderr and "Traceback" not in out.stderr


def test_a_backend_that_does_not_answer_at_start_is_asked_again_then_the_command_exits_1(tmp_path):
    """The start-up check is asked again for a lease (a loaded database may answer one call
    late: a cron job is not skipped for that), then a backend still down fails the command
    with the backend's error; nothing ran."""
    log = tmp_path / "work.log"
    out = subprocess.run(runasleader("gone-" + uuid.uuid4().hex[:8], "n0", log),
                         env=subprocess_env(DJANGO_LEADER_TEST_URL="django://gone"),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out
    assert "the lock backend did not answer" in out.stderr and "asking again" in out.stderr
    failed = [line for line in out.stderr.splitlines() if "lock backend failed" in line]
    assert failed and failed[-1].startswith("CommandError: lock backend failed: django://gone")
    assert "Connection refused" in failed[-1] and "Is the server running" in failed[-1]  # one line, whole
    assert not starts(log)
