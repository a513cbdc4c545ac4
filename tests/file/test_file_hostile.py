"""file:// in a shared directory: planted symlinks and FIFOs are never followed or opened
for reading, unsafe directories are refused or warned about, and ``status`` creates nothing."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_leader import Election
from celery_leader.backends.file import FileBackend
from celery_leader.errors import BackendUnavailable, ConfigurationError
from celery_leader.testing import sample_record

T = 2.0
FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    return d


def test_a_planted_lock_symlink_is_refused_not_followed(lock_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    (lock_dir / "beat.lock").symlink_to(target)
    backend = FileBackend(lock_dir)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        backend.lock("beat")
    assert not target.exists(), "the symlink was followed: a file was created at the attacker's path"


def test_a_symlink_planted_while_running_is_refused_not_followed(lock_dir: Path, tmp_path: Path) -> None:
    backend = FileBackend(lock_dir)
    lock = backend.lock("other")
    target = tmp_path / "victim"
    (lock_dir / "other.lock").symlink_to(target)
    try:
        with pytest.raises(BackendUnavailable, match="symbolic link"):
            lock.create(sample_record(), T)
        assert not target.exists()
    finally:
        lock.close()


def test_a_lease_symlink_is_not_read_through_and_is_replaced(lock_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"holderIdentity": "read-through-the-link", "leaseDurationMilliSeconds": 1000}')
    (lock_dir / "beat.lease.json").symlink_to(secret)
    lock = FileBackend(lock_dir).lock("beat")
    try:
        got = lock.get(T)
        assert got is not None and got.record.decode_error and got.record.holder == ""
        lock.update(sample_record(transitions=1), got.version, T)
        assert not (lock_dir / "beat.lease.json").is_symlink()
        assert "read-through-the-link" in secret.read_text()  # the target was not written
    finally:
        lock.close()


def test_a_fifo_as_lease_file_does_not_hang_status(lock_dir: Path) -> None:
    os.mkfifo(lock_dir / "beat.lease.json")
    out = subprocess.run(
        [sys.executable, "-m", "celery_leader", "status", "--url", f"file://{lock_dir}", "--name", "beat"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "unreadable" in out.stdout and "not a regular file" in out.stdout, out


def test_an_election_replaces_a_planted_fifo_after_one_lease(lock_dir: Path) -> None:
    os.mkfifo(lock_dir / "beat.lease.json")
    with Election("beat", url=f"file://{lock_dir}", identity="a", **FAST) as election:
        assert election.wait_until_leader(20)
    assert stat.S_ISREG(os.lstat(lock_dir / "beat.lease.json").st_mode)


def test_a_fifo_as_lock_file_is_refused(lock_dir: Path) -> None:
    os.mkfifo(lock_dir / "beat.lock")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        FileBackend(lock_dir).lock("beat")


def test_a_world_writable_directory_without_sticky_bit_is_refused(lock_dir: Path) -> None:
    lock_dir.chmod(0o777)
    with pytest.raises(ConfigurationError, match=r"writable by every user .*chmod o-w"):
        FileBackend(lock_dir)


def test_a_world_writable_sticky_directory_is_warned_about(lock_dir: Path, caplog) -> None:
    lock_dir.chmod(0o1777)
    caplog.set_level(logging.WARNING)
    FileBackend(lock_dir).check()
    assert "writable by every user" in caplog.text


def test_a_directory_owned_by_another_user_is_warned_about(lock_dir: Path, caplog) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    os.chown(lock_dir, 4242, -1)
    caplog.set_level(logging.WARNING)
    FileBackend(lock_dir).lock("beat").get(T)
    assert "owned by another user (uid 4242)" in caplog.text


def test_status_creates_nothing(lock_dir: Path) -> None:
    before = sorted(os.listdir(lock_dir))
    out = subprocess.run(
        [sys.executable, "-m", "celery_leader", "status", "--url", f"file://{lock_dir}", "--name", "beat"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(lock_dir)) == before == []


def test_status_reads_a_read_only_directory(lock_dir: Path) -> None:
    lock = FileBackend(lock_dir).lock("beat")
    lock.create(sample_record(holder="a", transitions=4), T)
    lock.close()
    chattr = shutil.which("chattr")
    if os.geteuid() == 0:
        if chattr is None or subprocess.run([chattr, "+i", str(lock_dir)], capture_output=True).returncode:
            pytest.skip("root ignores permission bits and chattr +i is not available here")
    else:
        lock_dir.chmod(0o500)
    try:
        before = sorted(os.listdir(lock_dir))
        out = subprocess.run(
            [sys.executable, "-m", "celery_leader", "status", "--url", f"file://{lock_dir}", "--name", "beat", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert '"holder": "a"' in out.stdout and '"token": 4' in out.stdout
        assert sorted(os.listdir(lock_dir)) == before
    finally:
        if os.geteuid() == 0:
            subprocess.run([chattr, "-i", str(lock_dir)], check=True)
        lock_dir.chmod(0o700)


def test_an_oversized_lease_file_is_read_only_in_part(lock_dir: Path) -> None:
    lease = lock_dir / "beat.lease.json"
    lease.write_bytes(b"{" + b" " * (50 * 1024 * 1024) + b"}")
    lock = FileBackend(lock_dir).lock("beat")
    try:
        got = lock.get(T)
        assert got is not None and "larger than" in got.record.decode_error
        time.sleep(0.01)
        lease.write_bytes(b"{" + b" " * (50 * 1024 * 1024) + b" }")  # same start, another file
        from celery_leader.errors import Conflict

        with pytest.raises(Conflict):
            lock.update(sample_record(transitions=1), got.version, T)
        got = lock.get(T)
        lock.update(sample_record(transitions=1), got.version, T)
        assert lock.get(T).record.decode_error is None
    finally:
        lock.close()
