"""SIGTERM to a plain guarded APScheduler script shuts it down cleanly and hands over at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import stop_process

from .test_apscheduler_guard import holder, wait_holder

pytestmark = pytest.mark.processes


def script(tmp: Path, url: str, ident: str, kind: str, *extra: str) -> subprocess.Popen:
    err = open(tmp / f"{ident}.err", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "tests.apscheduler.plain_script", url, "aps", ident,
                                 str(tmp / "runs.log"), kind, *extra], stdout=err, stderr=err)  # fmt: skip
    finally:
        err.close()


@pytest.mark.parametrize("kind", ["blocking", "background"])
def test_sigterm_releases_so_the_standby_takes_over_at_once(tmp_path, kind):
    url = f"file://{tmp_path}"
    first = script(tmp_path, url, "first", kind)
    second = None
    try:
        assert wait_holder(url, "aps", set()) == "first"
        # the first leader has run its job (not only taken the lock): the check at the end
        # needs a run of each term, and a SIGTERM before the first run would leave none
        deadline = time.monotonic() + 20
        while "1" not in tokens(tmp_path):
            assert time.monotonic() < deadline, (tmp_path / "first.err").read_text()
            time.sleep(0.05)
        second = script(tmp_path, url, "second", kind)
        # the standby is up and has seen the lock held (its election read it, so it is
        # retrying): from here it takes over when the lock is released, or else after the lease
        wait_log(tmp_path / "second.err", "first leads 'aps': standing by", second)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 143, (tmp_path / "first.err").read_text()
        # well within the 30 s lease: the lock was released, not waited out
        assert wait_holder(url, "aps", {"first"}, timeout=10) == "second"
        assert "Traceback" not in (tmp_path / "first.err").read_text()
        deadline = time.monotonic() + 20
        while "2" not in tokens(tmp_path):  # the new leader runs the jobs, with the next token
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
    assert set(tokens(tmp_path)) == {"1", "2"}


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (said := path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() >= deadline:
            raise AssertionError(f"{path.stem} did not log {text!r} (exit {proc.poll()}):\n{said[-3000:]}")
        time.sleep(0.05)


def tokens(tmp: Path) -> list[str]:
    log = tmp / "runs.log"
    return [line.split()[1] for line in log.read_text().splitlines() if line.count(" ") == 1] if log.exists() else []


# SIGTERM lands while APScheduler submits a job, where it catches BaseException
SIGTERM_IN_SUBMIT = """
import signal, sys
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from celery_leader.apscheduler import guard

class SignalledWhileSubmitting(ThreadPoolExecutor):
    def submit_job(self, job, run_times):
        signal.raise_signal(signal.SIGTERM)  # its handler runs here, inside APScheduler's try
        super().submit_job(job, run_times)

sched = BlockingScheduler(executors={"default": SignalledWhileSubmitting()})
guard(sched, url=sys.argv[1], name="aps", identity="only", lease_duration=30, renew_deadline=20, retry_period=0.5)
sched.add_job(print, "interval", seconds=0.2, args=("ran",))
sched.start()
print("start() returned", flush=True)
"""


def test_sigterm_while_a_job_is_submitted_is_not_swallowed(tmp_path):
    """APScheduler logged the SystemExit as 'Error submitting job' and ran on: the lock was kept."""
    url = f"file://{tmp_path}"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_IN_SUBMIT, url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise AssertionError(f"still running 60 s after its SIGTERM:\n{proc.communicate()[0][-3000:]}") from None
    finally:
        stop_process(proc)
    assert proc.returncode == 143, out
    assert "Error submitting" not in out and "Traceback" not in out and "start() returned" not in out, out
    assert holder(url, "aps") != "only", "the lock was not released"


def test_opting_out_leaves_signals_alone(tmp_path):
    url = f"file://{tmp_path}"
    proc = script(tmp_path, url, "only", "blocking", "--no-signals")
    try:
        assert wait_holder(url, "aps", set()) == "only"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM  # killed by the default action: nothing released
        assert holder(url, "aps") == "only"
    finally:
        stop_process(proc)
