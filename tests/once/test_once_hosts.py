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


def host(url: str, work: Path, tag: str, *slot_args: str, python_api: bool = False) -> subprocess.Popen:
    """Host ``tag`` (also its identity); what it logs goes to ``work/tag.err`` (see :func:`said`)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CELERY_LEADER_LOG_LEVEL": "INFO"}
    if python_api:
        code = (
            "import os, subprocess, sys\n"
            "from celery_leader import once_per\n"
            "from celery_leader.once import current_leadership\n"
            "def seen(who):\n"  # what `run` logs when its election sees who leads
            "    print(f'{who} leads job', file=sys.stderr, flush=True)\n"
            f"@once_per(name='job', slot={slot_args[1]!r}, url={url!r}, identity={tag!r}, on_new_leader=seen, "
            "lease_duration=1, renew_deadline=0.6, retry_period=0.2)\n"
            "def job():\n"
            "    env = dict(os.environ, CELERY_LEADER_TOKEN=str(current_leadership().token))\n"
            f"    subprocess.run(['sh', '-c', {JOB!r}, 'sh', {str(work)!r}], check=True, env=env)\n"
            "job()\n"
        )
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, "-m", "celery_leader", "run", "--url", url, "--name", "job", "--identity", tag, *FAST,
                *slot_args, "--", "sh", "-c", JOB, "sh", str(work)]
    with open(work / f"{tag}.err", "ab") as err:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)


def said(work: Path, tag: str) -> str:
    path = work / f"{tag}.err"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_standing_by(work: Path, tag: str, proc: subprocess.Popen, leader: str, timeout: float = 60.0) -> None:
    """Until host ``tag`` has seen ``leader`` hold the lock: it made its attempt and now waits.

    Its election read the lock and found it held (the ``NewLeader`` notice: ``run`` logs
    "<leader> leads <name>"), so it is past starting up and retrying; a sleep instead
    would leave that to how fast a loaded machine starts a Python process.
    """
    text = f"{leader} leads job"
    deadline = time.monotonic() + timeout
    while text not in said(work, tag):
        if proc.poll() is not None or time.monotonic() >= deadline:
            when = f"before it exited {proc.returncode}" if proc.returncode is not None else f"within {timeout} s"
            raise AssertionError(f"{tag} did not log {text!r} (standing by) {when}:\n{said(work, tag)[-3000:]}")
        time.sleep(0.05)


def wait_for(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
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
    first = host(lock_url, tmp_path, "first", *slot_args)
    try:
        wait_for(lambda: lines(tmp_path) == ["start 1"], what="the first host starting the job")
        second = host(lock_url, tmp_path, "second", *slot_args)  # arrives while the first runs
        wait_standing_by(tmp_path, "second", second, leader="first")
        (tmp_path / "go").touch()
        assert first.wait(30) == 0, said(tmp_path, "first")
        third = host(lock_url, tmp_path, "third", *slot_args)  # arrives after the first released
        assert second.wait(30) == 0, said(tmp_path, "second")
        assert third.wait(30) == 0, said(tmp_path, "third")
    finally:
        for proc in (first, locals().get("second"), locals().get("third")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert lines(tmp_path) == ["start 1", "end"]
    assert "already done" in said(tmp_path, "third")
    expected = {"nightly-1"} if slot_args[0] == "--slot" else {before, Slot.every("1h").key}
    assert stored_slot(lock_url) in expected


@pytest.mark.parametrize("python_api", [False, True], ids=["cli", "python"])
def test_a_host_killed_mid_run_leaves_the_slot_open_for_the_next(lock_url, tmp_path, python_api):
    first = host(lock_url, tmp_path, "first", "--slot", "s1", python_api=python_api)
    second = third = None
    try:
        wait_for(lambda: lines(tmp_path) == ["start 1"], what="the first host starting the job")
        second = host(lock_url, tmp_path, "second", "--slot", "s1", python_api=python_api)
        wait_standing_by(tmp_path, "second", second, leader="first")  # a standby when the first dies
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if python_api:  # the job's own shell is not tied to the Python process: end it as a crash would
            os.kill(int((tmp_path / "pids").read_text().split()[0]), signal.SIGKILL)
        assert stored_slot(lock_url) is None
        # the standby took over after the lease and started it
        wait_for(lambda: len(lines(tmp_path)) == 2, what="the standby starting the job")
        assert lines(tmp_path)[1].startswith("start ") and lines(tmp_path)[1] != "start 1"
        (tmp_path / "go").touch()
        assert second.wait(30) == 0, said(tmp_path, "second")
        third = host(lock_url, tmp_path, "third", "--slot", "s1", python_api=python_api)
        assert third.wait(30) == 0, said(tmp_path, "third")
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
