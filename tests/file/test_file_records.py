"""What is on disk: the Go seed's JSON, garbage handling, ABA, leftovers, fork safety."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from celery_leader.backends.file import NONCE_KEY, VANISHED_HOLDER, FileBackend, FileLock
from celery_leader.lock import BackendUnavailable, Conflict
from celery_leader.testing import sample_record

T = 2.0


@pytest.fixture
def lock(backend: FileBackend):
    lk = backend.lock("beat")
    yield lk
    lk.close()


def test_file_holds_go_seed_json_and_nonce_is_private(lock: FileLock, lock_dir: Path) -> None:
    lock.create(sample_record(holder="py", transitions=4, lease_duration=0.6), T)
    doc = json.loads((lock_dir / "beat.lease.json").read_bytes())
    assert doc["holderIdentity"] == "py"
    assert doc["leaseDurationMilliSeconds"] == 600
    assert doc["leaderTransitions"] == 4
    assert isinstance(doc["acquireTime"], int) and isinstance(doc["renewTime"], int)
    assert len(doc[NONCE_KEY]) == 32
    got = lock.get(T)
    assert got is not None and NONCE_KEY not in got.record.extra


def test_go_written_record_without_nonce_can_be_taken_over(lock: FileLock, lock_dir: Path) -> None:
    raw = (
        b'{"holderIdentity":"go","leaseDurationMilliSeconds":1000,"acquireTime":1,"renewTime":2,"leaderTransitions":5}'
    )
    (lock_dir / "beat.lease.json").write_bytes(raw)
    got = lock.get(T)
    assert got is not None and got.record.holder == "go" and got.record.decode_error is None
    lock.update(got.record.evolve(holder="py", transitions=6), got.version, T)
    with pytest.raises(Conflict):
        lock.update(got.record.evolve(holder="other", transitions=6), got.version, T)


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_empty_and_truncated_files_are_undecodable_placeholders(lock: FileLock, lock_dir: Path, cut: int) -> None:
    lock.create(sample_record(), T)
    whole = (lock_dir / "beat.lease.json").read_bytes()
    (lock_dir / "beat.lease.json").write_bytes(whole[:cut])
    got = lock.get(T)
    assert got is not None
    assert got.record.decode_error and f"({len(whole[:cut])} bytes)" in got.record.decode_error
    assert not got.record.is_free
    lock.update(sample_record(holder="fixer", transitions=10), got.version, T)
    fixed = lock.get(T)
    assert fixed is not None and fixed.record.holder == "fixer" and fixed.record.decode_error is None


def test_create_does_not_overwrite_garbage(lock: FileLock, lock_dir: Path) -> None:
    (lock_dir / "beat.lease.json").write_bytes(b"\x00garbage")
    with pytest.raises(Conflict):
        lock.create(sample_record(), T)
    assert (lock_dir / "beat.lease.json").read_bytes() == b"\x00garbage"


def test_no_aba_after_delete_and_recreate(lock: FileLock, lock_dir: Path) -> None:
    rec = sample_record()
    v1 = lock.create(rec, T)
    (lock_dir / "beat.lease.json").unlink()
    with pytest.raises(Conflict):
        lock.update(rec, v1, T)
    # the token survives in NAME.lock: the vanished file reads as held, at that token
    got = lock.get(T)
    assert got is not None and got.record.holder == VANISHED_HOLDER and got.record.transitions == rec.transitions
    with pytest.raises(Conflict):
        lock.create(rec, T)  # no fresh start below the fence
    v2 = lock.update(rec.evolve(transitions=rec.transitions + 1), got.version, T)
    assert v2 != v1
    with pytest.raises(Conflict):
        lock.update(rec, v1, T)


def test_hand_edit_that_keeps_the_nonce_still_changes_the_version(lock: FileLock, lock_dir: Path) -> None:
    v1 = lock.create(sample_record(holder="a"), T)
    path = lock_dir / "beat.lease.json"
    path.write_bytes(path.read_bytes().replace(b'"a"', b'"z"'))
    with pytest.raises(Conflict):
        lock.update(sample_record(holder="b"), v1, T)


def test_leftover_temp_files_of_a_killed_writer_are_removed(backend: FileBackend, lock_dir: Path) -> None:
    leftover = lock_dir / ".beat.lease.json.deadbeef0000.tmp"
    leftover.write_bytes(b'{"holderIdentity": "half')
    other = lock_dir / ".other.lease.json.deadbeef0000.tmp"
    other.write_bytes(b"belongs to another election")
    lk = backend.lock("beat")
    try:
        lk.create(sample_record(), T)
    finally:
        lk.close()
    assert not leftover.exists()
    assert other.exists()


def test_deleted_lock_file_is_recreated_and_still_excludes(backend: FileBackend, lock_dir: Path) -> None:
    a, b = backend.lock("beat"), backend.lock("beat")
    try:
        v = a.create(sample_record(transitions=0), T)
        (lock_dir / "beat.lock").unlink()
        # b opens the new inode; a's descriptor is on the orphan and must notice
        with b._locked(True, T):
            with pytest.raises(BackendUnavailable):
                a.update(sample_record(transitions=1), v, 0.3)
        a.update(sample_record(transitions=1), v, T)
    finally:
        a.close()
        b.close()


def test_threads_sharing_one_lock_object_are_serialised(lock: FileLock) -> None:
    """flock is per open file description: the mutex must stop two threads of one object."""
    lock.create(sample_record(transitions=0), T)
    wins: list[int] = []
    guard = threading.Lock()
    barrier = threading.Barrier(8)

    def bump(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            while True:
                got = lock.get(T)
                assert got is not None
                try:
                    lock.update(got.record.evolve(transitions=got.record.transitions + 1), got.version, T)
                except Conflict:
                    continue
                with guard:
                    wins.append(i)
                break

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = lock.get(T)
    assert got is not None and got.record.transitions == len(wins) == 160


def test_forked_child_gets_its_own_flock(lock: FileLock) -> None:
    """A child sharing the parent's open file description would pass the parent's flock."""
    lock.create(sample_record(), T)
    with lock._locked(True, T):
        pid = os.fork()
        if pid == 0:  # child: the parent holds the lock, so this must time out
            code = 1
            try:
                lock.get(0.3)
            except BackendUnavailable:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_wait_for_change_sees_creation_and_deletion(lock: FileLock, backend: FileBackend, lock_dir: Path) -> None:
    writer = backend.lock("beat")
    try:
        # each wait may last two minutes: returning within 10 s means the change woke it
        started = time.monotonic()
        threading.Timer(0.3, lambda: writer.create(sample_record(), T)).start()
        lock.wait_for_change(None, 120.0)
        assert 0.2 < time.monotonic() - started < 10.0
        got = lock.get(T)
        assert got is not None
        started = time.monotonic()
        threading.Timer(0.3, (lock_dir / "beat.lease.json").unlink).start()
        lock.wait_for_change(got.version, 120.0)
        assert 0.2 < time.monotonic() - started < 10.0
        gone = lock.get(T)  # a token was handed out: the vanished file reads as held at it
        assert gone is not None and gone.record.holder == VANISHED_HOLDER and gone.version != got.version
    finally:
        writer.close()


def test_calls_after_close_fail_cleanly(lock: FileLock) -> None:
    lock.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        lock.get(T)
