"""``celery-leader run`` owns the whole process tree of its command (issue 14, items 5 and 6).

Real ``sh -c`` commands with background, double-forked and ``setsid`` descendants; real
signals to ``run`` (SIGKILL, SIGHUP, SIGTSTP); the lock as the next candidate would see it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_leader.testing.cluster import pid_alive, wait_dead

CLI = [sys.executable, "-m", "celery_leader"]
FAST = ["--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2"]


@pytest.fixture
def lockdir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    return d


def url(d: Path) -> str:
    return "file://" + str(d)


def start_run(lockdir: Path, *command: str, timing=FAST, extra=()) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", "--url", url(lockdir), "--name", "job", *timing, *extra, "--", *command],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def holder(lockdir: Path) -> dict:
    out = subprocess.run([*CLI, "status", "--url", url(lockdir), "--name", "job", "--json"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@contextlib.contextmanager
def reaping(*pid_files: Path):
    """Whatever happens, kill what the test started (a failing run leaves them behind)."""
    try:
        yield
    finally:
        for f in pid_files:
            with contextlib.suppress(Exception):
                os.kill(int(f.read_text().strip()), signal.SIGKILL)


def finish(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "leftover",
    [
        "sleep 300 & echo $! > {bg}",  # a plain background job
        "(sleep 300 & echo $! > {bg})",  # double fork: orphaned at once
        "setsid sleep 300 & echo $! > {bg}",  # left the process group and the session
    ],
    ids=["background", "double-fork", "setsid"],
)
def test_what_the_command_leaves_running_is_stopped_before_the_release(lockdir, tmp_path, leftover):
    bg = tmp_path / "bg.pid"
    with reaping(bg):
        proc = start_run(lockdir, "sh", "-c", leftover.format(bg=bg) + "; exit 0")
        assert proc.wait(60) == 0
        pid = int(wait_file(bg))
        assert not pid_alive(pid), "the command's background sleep outlived the command and the release"
        assert holder(lockdir)["holder"] is None


def test_sigkill_of_run_takes_the_whole_tree_with_it(lockdir, tmp_path):
    sh, dbl, sid = tmp_path / "sh.pid", tmp_path / "dbl.pid", tmp_path / "sid.pid"
    script = (
        f"(sleep 300 & echo $! > {dbl}); "  # double fork: the sleep is orphaned at once
        f"setsid sleep 300 & echo $! > {sid}; "  # left the process group and the session
        f"echo $$ > {sh}; sleep 300"
    )
    with reaping(sh, dbl, sid):
        proc = start_run(lockdir, "sh", "-c", script)
        try:
            pids = [int(wait_file(f)) for f in (sh, dbl, sid)]
            assert all(pid_alive(p) for p in pids)
            proc.kill()  # SIGKILL: run can do nothing about it
            proc.wait(10)
            for pid in pids:
                assert wait_dead(pid, 10.0), f"descendant {pid} survived a SIGKILL of run"
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sighup_is_a_sigterm_grace_for_the_command_and_release(lockdir, tmp_path):
    log = tmp_path / "child.log"
    proc = start_run(lockdir, sys.executable, "-m", "celery_leader.testing.child", str(log))
    try:
        wait_file(log)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(30) == 0
    finally:
        finish(proc)
    events = [json.loads(line)["e"] for line in log.read_text().splitlines()]
    assert events[-1] == "stop", "the command was killed instead of getting SIGTERM and its grace"
    assert holder(lockdir)["holder"] is None, "the lock was left to expire instead of released"


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, 137), (signal.SIGTERM, 143)])
def test_exit_status_of_a_command_killed_by_a_signal_is_128_plus_n(lockdir, sig, status):
    proc = start_run(lockdir, "sh", "-c", f"kill -{int(sig)} $$")
    assert proc.wait(60) == status


def test_sigtstp_ends_the_term_and_stops_the_command_before_run_stops(lockdir, tmp_path):
    log = tmp_path / "child.log"
    proc = start_run(lockdir, sys.executable, "-m", "celery_leader.testing.child", str(log))
    try:
        wait_file(log)
        child = json.loads(log.read_text().splitlines()[0])["pid"]
        proc.send_signal(signal.SIGTSTP)
        deadline = time.monotonic() + 30
        while state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state(proc.pid) == "T", "run did not stop itself"
        assert not pid_alive(child), "the command keeps working while run is stopped"
        assert json.loads(log.read_text().splitlines()[-1])["e"] == "stop"
        assert holder(lockdir)["holder"] is None  # released: another candidate may lead at once
        # continued: it stands by again and leads with a new term
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while holder(lockdir).get("token") != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder(lockdir)["token"] == 2
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            finish(proc)


def test_renew_deadline_leaves_the_command_its_grace_while_calls_hang(lockdir, tmp_path):
    """Calls hang (the lock file's flock is held elsewhere): the term ends at renew_deadline,
    and the command gets its --grace before the lease deadline (issue 14.6)."""
    up, clean = tmp_path / "up", tmp_path / "clean"
    cleanup_takes = 0.7  # less than --grace and than (lease deadline - renew deadline) = 1.44 s
    child = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    time.sleep({cleanup_takes}); open({str(clean)!r}, 'w').write('clean'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(up)!r}, 'w').write('up')\n"
        "while True: time.sleep(0.05)\n"
    )
    timing = ["--lease-duration", "3", "--renew-deadline", "1.5", "--retry-period", "0.5"]
    proc = start_run(lockdir, sys.executable, "-c", child, timing=timing, extra=["--grace", "1.2"])
    fd = None
    try:
        wait_file(up)
        fd = os.open(lockdir / "job.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # every call of run now hangs until its timeout
        deadline = time.monotonic() + 20
        while not clean.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clean.exists(), "the command was SIGKILLed without its grace"
    finally:
        if fd is not None:
            os.close(fd)
        finish(proc)


@pytest.mark.parametrize("grace", ["-1", "nan", "inf", "1e300"])
def test_grace_must_be_finite_and_not_negative(lockdir, grace):
    out = subprocess.run([*CLI, "run", "--url", url(lockdir), "--name", "job", f"--grace={grace}", "--", "true"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert "--grace must be" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("option", ["--lease-duration=inf", "--lease-duration=1e300", "--retry-period=0.001"])
def test_timing_options_must_be_finite_and_sane(lockdir, option):
    out = subprocess.run([*CLI, "run", "--url", url(lockdir), "--name", "job", option, "--", "true"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and "configuration error" in out.stderr and "Traceback" not in out.stderr
