"""A git standby reads every ``retry_period`` (issue 21: what each read costs). Reads keep
their repository open and run in a kept reader thread; these tests show that what is kept
stays correct: fresh after another writer and after ``git gc``, no thread per read, a hung
read leaves the next one working, and a forked child reads with threads of its own."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

import celery_leader.backends.git as git_module
from celery_leader.backends.git import GitBackend
from celery_leader.errors import BackendUnavailable
from celery_leader.testing import sample_record

from .conftest import git

T = 5.0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "locks.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def test_reads_reuse_one_repository_and_one_thread_and_see_every_write(repo: Path, monkeypatch) -> None:
    writer = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    standby = GitBackend.from_url(f"git+file://{repo}")
    lock = standby.lock("beat")
    opened = [0]
    real_open = standby._transport._open  # type: ignore[attr-defined]

    def counted_open():
        opened[0] += 1
        return real_open()

    monkeypatch.setattr(standby._transport, "_open", counted_open)
    threads: set[tuple[int, str]] = set()
    real_get = standby._transport.get  # type: ignore[attr-defined]

    def noted_get(lk, timeout):
        threads.add((threading.get_ident(), threading.current_thread().name))
        return real_get(lk, timeout)

    monkeypatch.setattr(standby._transport, "get", noted_get)
    version = writer.create(sample_record(holder="leader"), T)
    for n in range(20):
        got = lock.get(T)
        assert got is not None and got.version == version  # never a stale read
        version = writer.update(sample_record(holder="leader", renew_time=1_700_000_000.0 + n), version, T)
    assert opened[0] == 1
    assert len(threads) == 1, threads  # one kept reader, not a thread per read
    assert threads.pop()[1] == "celery-leader-git-reader"
    standby.close()


def test_a_kept_repository_reads_through_git_gc_and_pack_refs(repo: Path) -> None:
    """``git gc`` packs the objects and deletes the loose ones, ``pack-refs`` moves the ref into
    ``packed-refs``: the repository a standby kept open from before still reads the latest
    record, and after the next write too."""
    writer = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    lock = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    version = writer.create(sample_record(holder="leader"), T)
    for n in range(3):
        version = writer.update(sample_record(holder="leader", transitions=2 + n), version, T)
        got = lock.get(T)
        assert got is not None and got.version == version
    for round_ in range(2):
        git(repo, "gc", "--quiet", "--prune=now")
        git(repo, "pack-refs", "--all")
        assert not (repo / "refs" / "celery-leader" / "beat").exists()  # only in packed-refs now
        got = lock.get(T)
        assert got is not None and got.version == version and got.record.transitions == 4 + round_
        version = writer.update(sample_record(holder="leader", transitions=5 + round_), version, T)
        got = lock.get(T)
        assert got is not None and got.version == version and got.record.transitions == 5 + round_


def test_a_hung_read_keeps_its_reader_and_the_next_read_takes_another(repo: Path, monkeypatch) -> None:
    lock = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    GitBackend.from_url(f"git+file://{repo}").lock("beat").create(sample_record(holder="leader"), T)
    assert lock.get(T) is not None
    gate = threading.Event()
    real = git_module._LocalTransport.get

    def hangs_once(self, lk, timeout):
        monkeypatch.setattr(git_module._LocalTransport, "get", real)
        gate.wait(30)
        return real(self, lk, timeout)

    monkeypatch.setattr(git_module._LocalTransport, "get", hangs_once)
    try:
        with pytest.raises(BackendUnavailable, match="did not finish"):
            lock.get(0.3)
        other = GitBackend.from_url(f"git+file://{repo}").lock("beat")  # (the first one's mutex is held)
        got = other.get(T)
        assert got is not None and got.record.holder == "leader"
    finally:
        gate.set()


def test_a_forked_child_reads_with_readers_of_its_own(repo: Path) -> None:
    backend = GitBackend.from_url(f"git+file://{repo}")
    lock = backend.lock("beat")
    version = lock.create(sample_record(holder="parent"), T)
    assert lock.get(T) is not None  # the parent now has an idle reader and a kept repository
    assert git_module._IDLE_READERS
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's reader thread does not exist here
        try:
            got = lock.get(3.0)
            os.write(w, b"ok" if got is not None and got.version == version else b"wrong")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(w)
    said = os.read(r, 256)
    os.close(r)
    os.waitpid(pid, 0)
    assert said == b"ok"
    got = lock.get(T)  # and the parent's own reader still works
    assert got is not None and got.version == version
