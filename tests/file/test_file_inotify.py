"""A file:// standby sleeps on inotify instead of polling (issue 21): it wakes for a change of
its own lease file, not for other files, and without inotify it still notices by polling."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from celery_leader.backends import _inotify
from celery_leader.backends.file import FileLock
from celery_leader.record import LeaderRecord

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")

LONG = 30.0  # a wait that only a change can end within a test's life


def rec(holder: str, token: int = 1) -> LeaderRecord:
    return LeaderRecord(holder=holder, lease_duration=15, transitions=token)


class Counting(FileLock):
    """Counts full reads of the lease file (the cost a polling standby pays)."""

    peeks = 0

    def _peek_version(self) -> str | None:
        type(self).peeks += 1
        return super()._peek_version()


def waiter(lock: FileLock, version: str | None) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        lock.wait_for_change(version, LONG)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_a_waiting_standby_does_not_read_until_something_changes(tmp_path: Path) -> None:
    assert _inotify.available()
    writer, watcher = FileLock(tmp_path, "job"), Counting(tmp_path, "job")
    version = writer.create(rec("leader"), 2.0)
    Counting.peeks = 0
    thread, done = waiter(watcher, version)
    assert not done.wait(1.0)  # nothing changed: still waiting ...
    assert Counting.peeks == 1  # ... after one read (polling every 20 ms would have read ~50 times)
    writer.update(rec("leader"), version, 2.0)
    assert done.wait(LONG)  # the change ended the wait long before its timeout
    thread.join(5)


def test_other_files_in_the_directory_do_not_end_the_wait(tmp_path: Path) -> None:
    mine, other = FileLock(tmp_path, "mine"), FileLock(tmp_path, "other")
    version = mine.create(rec("leader"), 2.0)
    other_version = other.create(rec("leader"), 2.0)
    Counting.peeks = 0
    watcher = Counting(tmp_path, "mine")
    thread, done = waiter(watcher, version)
    assert not done.wait(0.3)
    for _ in range(5):  # another election renews in the same directory
        other_version = other.update(rec("leader"), other_version, 2.0)
    assert not done.wait(0.5)
    assert Counting.peeks == 1  # other files' events are filtered by name, not re-read
    mine.update(rec(""), version, 2.0)  # a release of ours
    assert done.wait(LONG)
    thread.join(5)


def test_a_vanished_lease_file_ends_the_wait(tmp_path: Path) -> None:
    lock = FileLock(tmp_path, "job")
    version = lock.create(rec("leader"), 2.0)
    thread, done = waiter(FileLock(tmp_path, "job"), version)
    assert not done.wait(0.3)
    lock.lease_path.unlink()
    assert done.wait(LONG)
    thread.join(5)


def test_without_inotify_the_standby_polls_and_still_notices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_inotify, "available", lambda: False)
    writer, watcher = FileLock(tmp_path, "job"), Counting(tmp_path, "job")
    version = writer.create(rec("leader"), 2.0)
    Counting.peeks = 0
    thread, done = waiter(watcher, version)
    writer.update(rec("leader"), version, 2.0)
    assert done.wait(LONG)
    thread.join(5)
    assert not watcher._use_inotify()


def test_inotify_instance_limit_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(24, "inotify_init1 failed")  # EMFILE: max_user_instances reached

    monkeypatch.setattr(_inotify, "DirWatch", refuse)
    writer, watcher = FileLock(tmp_path, "job"), FileLock(tmp_path, "job")
    version = writer.create(rec("leader"), 2.0)
    thread, done = waiter(watcher, version)
    writer.update(rec("leader"), version, 2.0)
    assert done.wait(LONG)
    thread.join(5)
