"""The ``celery-leader`` command: status, step-down, run's errors and health, the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from celery_leader import open_backend
from celery_leader.testing.cluster import ElectorCluster, pid_alive
from tests.servers import free_port, wait_for_port

CLI = [sys.executable, "-m", "celery_leader"]
FAST = ["--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2"]


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def lockdir(tmp_path: Path) -> str:
    d = tmp_path / "locks"
    d.mkdir()
    return "file://" + str(d)


def test_status_of_a_lock_nobody_created(lockdir):
    out = cli("status", "--url", lockdir, "--name", "job", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["holder"] is None


def test_url_comes_from_the_environment(lockdir):
    out = cli("status", "--name", "job", "--json", env={"CELERY_LEADER_URL": lockdir})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "free" and json.loads(out.stdout)["exists"] is False


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "--name", "job", "--url", "nope://x", "--", "true"], "unknown lock URL scheme 'nope'"),
        (["run", "--name", "job", "--url", "file:///does/not/exist", "--", "true"], "does not exist"),
        (["run", "--name", "job", "--lease-duration", "1", "--renew-deadline", "2", "--", "true"], "renew_deadline"),
        (["run", "--name", "bad/name", "--", "true"], "election name"),
    ],
)
def test_run_refuses_bad_configuration_with_the_fix(tmp_path, args, words):
    out = cli(*args, env={"CELERY_LEADER_URL": "file://" + str(tmp_path)})
    assert out.returncode == 2
    assert words in out.stderr


def test_run_without_command_says_how(lockdir):
    out = cli("run", "--url", lockdir, "--name", "job")
    assert out.returncode == 2 and "after --" in out.stderr


def test_run_passes_token_and_exits_with_the_childs_code(lockdir, tmp_path):
    script = "import os,sys; open(sys.argv[1],'w').write(os.environ['CELERY_LEADER_TOKEN']+' '+os.environ['CELERY_LEADER_NAME']+' '+os.environ['CELERY_LEADER_IDENTITY']); sys.exit(7)"
    out_file = tmp_path / "env.txt"
    out = cli("run", "--url", lockdir, "--name", "job", "--identity", "me", *FAST, "--", sys.executable, "-c", script, str(out_file))
    assert out.returncode == 7, out.stderr
    assert out_file.read_text() == "1 job me"
    # the child exited: the lock was released for the next candidate
    status = json.loads(cli("status", "--url", lockdir, "--name", "job", "--json").stdout)
    assert status["holder"] is None and status["token"] == 1


def test_status_and_step_down_move_leadership(lockdir, tmp_path):
    with ElectorCluster(lockdir, "job", 2, workdir=tmp_path / "c", lease_duration=2, renew_deadline=1.2, retry_period=0.4) as c:
        first = c.wait_for_leader()
        backend = open_backend(lockdir)
        lock = backend.lock("job")
        renewed_before, asked = lock.get(5).record.renew_time, time.time()
        status = json.loads(cli("status", "--url", lockdir, "--name", "job", "--json").stdout)
        answered, renewed_after = time.time(), lock.get(5).record.renew_time
        backend.close()
        assert status["holder"] == c.identity(first) and status["token"] == 1
        # judged at some moment of the call, on a renew_time the record had meanwhile (ms rounding)
        low, high = asked - renewed_after - 0.0005, answered - renewed_before + 0.0005
        assert low <= status["renewed_seconds_ago"] <= high, (low, status["renewed_seconds_ago"], high)
        other = 1 - first
        out = cli("step-down", "--url", lockdir, "--name", "job", "--to", c.identity(other))
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{c.identity(other)} leads job (token 2)" in out.stdout
        assert c.wait_for_leader(exclude={first}) == other
    report = c.check()
    report.assert_safe()
    assert [iv.token for iv in report.intervals] == [1, 2]
    assert report.intervals[0].stopped_cleanly  # the job was stopped before the handover


def test_step_down_when_nobody_leads(lockdir):
    out = cli("step-down", "--url", lockdir, "--name", "job")
    assert out.returncode == 0 and "nobody leads" in out.stdout


def test_child_that_ignores_sigterm_is_killed_by_the_lease_deadline(lockdir, tmp_path):
    """--grace (600 s) far longer than the lease (1 s): SIGKILL still comes by the lease deadline."""
    stubborn = "import signal,time,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(3600)"
    proc = subprocess.Popen(
        [*CLI, "run", "--url", lockdir, "--name", "job", *FAST, "--grace", "600", "--", sys.executable, "-c", stubborn],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "up":
                break
        kids = []  # the child is a child of one of run's threads
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
        child = kids[0]
        proc.send_signal(signal.SIGTERM)
        # waiting out --grace would take 600 s: ending within 20 s means the lease deadline did it
        proc.wait(20)
        assert not pid_alive(child)
        log = proc.stdout.read()
        # killed by run itself before the lock was released (not by its supervisor once run exited)
        assert "did not stop in time: SIGKILL" in log and "released the lock" in log, log
        assert log.index("did not stop in time: SIGKILL") < log.index("released the lock"), log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_endpoint_reports_leadership(lockdir, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "run", "--url", lockdir, "--name", "job", *FAST, "--health-port", str(port), "--", sys.executable, "-c", "import time; time.sleep(600)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert wait_for_port(port)
        deadline = time.monotonic() + 10
        info = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                info = json.loads(r.read())
                assert r.status == 200
            if info["leading"]:
                break
            time.sleep(0.05)
        assert info["leading"] and info["token"] == 1 and info["healthy"]
        time.sleep(0.6)  # a few renewals for the histogram
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        assert 'leader_election_master_status{name="job"} 1.0' in text
        assert "leader_election_renew_duration_seconds_bucket" in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0


def test_demo_runs_and_finds_no_overlap():
    out = cli("demo", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 overlaps, 0 token regressions" in out.stdout
    assert "result: never two leaders" in out.stdout


def test_run_waits_out_a_backend_that_is_down_at_start(tmp_path):
    """Unreachable is not misconfigured: run stands by, then leads once the server is up."""
    import shutil

    from tests.servers import running, unavailable

    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    marker = tmp_path / "led"
    proc = subprocess.Popen(
        [*CLI, "run", "--url", f"redis://127.0.0.1:{port}/0", "--name", "job", *FAST, "--",
         sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x'); import time; time.sleep(600)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        assert proc.poll() is None, "run must not exit while the backend is down"
        assert not marker.exists()
        with running(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port):
            deadline = time.monotonic() + 15
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), "run did not lead after the backend came up"
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
