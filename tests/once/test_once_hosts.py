"""Cron on every host: three ``celery-leader run --once-per`` processes run the job once.

The order is forced, not left to timing: the job blocks until the test lets it finish, so
the second host is known to arrive while the first runs, and the third after it finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_leader import open_backend
from celery_leader.once import LAST_SLOT_KEY, Slot

FAST = ["--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2"]
# the job: note its start, wait for the test's "go" file, note its end
JOB = 'echo $$ >> "$1/pids"; echo "start $CELERY_LEADER_TOKEN" >> "$1/log"; while [ ! -e "$1/go" ]; do sleep 0.05; done; echo end >> "$1/log"'


def host(url: str, work: Path, *slot_args: str, python_api: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if python_api:
        code = (
            "import os, subprocess, sys\n"
            "from celery_leader import once_per\n"
            "from celery_leader.once import current_leadership\n"
            f"@once_per(name='job', slot={slot_args[1]!r}, url={url!r}, lease_duration=1, renew_deadline=0.6, retry_period=0.2)\n"
            "def job():\n"
            "    env = dict(os.environ, CELERY_LEADER_TOKEN=str(current_leadership().token))\n"
            f"    subprocess.run(['sh', '-c', {JOB!r}, 'sh', {str(work)!r}], check=True, env=env)\n"
            "job()\n"
        )
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, "-m", "celery_leader", "run", "--url", url, "--name", "job", *FAST, *slot_args,
                "--", "sh", "-c", JOB, "sh", str(work)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lines(work: Path) -> list[str]:
    log = work / "log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


def stored_slot(url: str) -> str | None:
    backend = open_backend(url)
    try:
        got = backend.lock("job").get(5)
        return got.record.extra.get(LAST_SLOT_KEY) if got else None
    finally:
        backend.close()


@pytest.mark.parametrize("slot_args", [("--slot", "nightly-1"), ("--once-per", "1h")])
def test_three_hosts_seconds_apart_run_the_job_once(lock_url, tmp_path, slot_args):
    before = Slot.every("1h").key
    first = host(lock_url, tmp_path, *slot_args)
    try:
        wait_for(lambda: lines(tmp_path) == ["start 1"])
        second = host(lock_url, tmp_path, *slot_args)  # arrives while the first runs
        time.sleep(0.5)
        (tmp_path / "go").touch()
        assert first.wait(30) == 0, first.stderr.read()
        third = host(lock_url, tmp_path, *slot_args)  # arrives after the first released
        assert second.wait(30) == 0, second.stderr.read()
        assert third.wait(30) == 0, third.stderr.read()
    finally:
        for proc in (first, locals().get("second"), locals().get("third")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert lines(tmp_path) == ["start 1", "end"]
    assert "already done" in third.stderr.read()
    expected = {"nightly-1"} if slot_args[0] == "--slot" else {before, Slot.every("1h").key}
    assert stored_slot(lock_url) in expected


@pytest.mark.parametrize("python_api", [False, True], ids=["cli", "python"])
def test_a_host_killed_mid_run_leaves_the_slot_open_for_the_next(lock_url, tmp_path, python_api):
    first = host(lock_url, tmp_path, "--slot", "s1", python_api=python_api)
    second = third = None
    try:
        wait_for(lambda: lines(tmp_path) == ["start 1"])
        second = host(lock_url, tmp_path, "--slot", "s1", python_api=python_api)
        time.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if python_api:  # the job's own shell is not tied to the Python process: end it as a crash would
            os.kill(int((tmp_path / "pids").read_text().split()[0]), signal.SIGKILL)
        assert stored_slot(lock_url) is None
        wait_for(lambda: len(lines(tmp_path)) == 2)  # the standby took over after the lease and started it
        assert lines(tmp_path)[1].startswith("start ") and lines(tmp_path)[1] != "start 1"
        (tmp_path / "go").touch()
        assert second.wait(30) == 0, second.stderr.read()
        third = host(lock_url, tmp_path, "--slot", "s1", python_api=python_api)
        assert third.wait(30) == 0, third.stderr.read()
    finally:
        for proc in (first, second, third):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [line for line in lines(tmp_path) if line == "end"] == ["end"]
    assert stored_slot(lock_url) == "s1"


def test_a_failed_run_leaves_the_slot_open(lock_url, tmp_path):
    common = [sys.executable, "-m", "celery_leader", "run", "--url", lock_url, "--name", "job", *FAST, "--slot", "k"]
    failed = subprocess.run([*common, "--", "sh", "-c", "exit 7"], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 7 and "stays open" in failed.stderr
    assert stored_slot(lock_url) is None
    ok = subprocess.run([*common, "--", "true"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and stored_slot(lock_url) == "k"


@pytest.mark.parametrize("args, words", [
    (["--once-per", "soon"], "is not a duration"),
    (["--once-per", "1h", "--slot", "x"], "either"),
    (["--slot", "two words"], "slot key"),
])
def test_bad_slot_options_are_one_line_errors(tmp_path, args, words):
    out = subprocess.run([sys.executable, "-m", "celery_leader", "run", "--url", f"file://{tmp_path}", "--name", "job",
                          *args, "--", "true"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("fault", ["refused", "black-hole"])
def test_a_slot_that_ends_with_the_backend_away_is_not_reported_as_done(tmp_path, fault):
    """The lock's Redis refuses or hangs for the whole slot: nobody can lead, so nobody runs
    the job. The exit status must not be the 0 of "done elsewhere" (a cron monitor would
    read it as success), nor may the job run; the password stays out of the output."""
    from benchmarks.tcpproxy import TcpProxy
    from tests.servers import free_port

    proxy = TcpProxy(6379) if fault == "black-hole" else None
    if proxy is not None:
        proxy.set_mode("blackhole")
    port = proxy.port if proxy is not None else free_port()
    try:
        out = subprocess.run([sys.executable, "-m", "celery_leader", "run", "--url",
                              f"redis://:hun%2Fter2@127.0.0.1:{port}/0", "--name", "job", *FAST, "--once-per", "2s",
                              "--", "sh", "-c", f"echo ran > {tmp_path}/ran"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        if proxy is not None:
            proxy.close()
    assert out.returncode == 4, out.stderr
    assert "nobody was seen leading" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ran").exists()
    assert "ter2" not in out.stdout + out.stderr
