"""Wrong configuration gives a ConfigurationError that names the fix, at start-up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from celery_leader import ConfigurationError, open_backend
from celery_leader.backends.file import FileBackend, FileLock, validate_name
from celery_leader.lock import BackendUnavailable
from celery_leader.registry import default_url
from celery_leader.testing import sample_record


def test_registry_opens_file_urls(lock_dir: Path) -> None:
    backend = open_backend(f"file://{lock_dir}")
    assert isinstance(backend, FileBackend)
    assert backend.directory == lock_dir
    assert backend.describe() == f"file://{lock_dir}"
    assert FileBackend.from_url(f"file://localhost{lock_dir}/").directory == lock_dir


@pytest.mark.parametrize(
    "url, words",
    [
        ("file://relative/dir", ["three slashes", "relative"]),
        ("file:relative/dir", ["relative", "file:///absolute/path"]),
        ("file://", ["relative"]),
        ("file:///tmp?poll=1", ["no options"]),
        ("file://otherhost/tmp", ["three slashes"]),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        FileBackend.from_url(url)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "locks"
    with pytest.raises(ConfigurationError, match=r"does not exist; create it \(mkdir -p "):
        FileBackend.from_url(f"file://{missing}")
    assert not missing.exists()


def test_a_regular_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "locks"
    f.write_text("I am a file")
    with pytest.raises(ConfigurationError, match="is a regular file; the file:// URL must name a directory"):
        FileBackend.from_url(f"file://{f}")


def test_directory_removed_after_start_is_reported_by_lock_and_check(lock_dir: Path) -> None:
    backend = FileBackend.from_url(f"file://{lock_dir}")
    backend.check()
    shutil.rmtree(lock_dir)
    with pytest.raises(ConfigurationError, match="does not exist"):
        backend.lock("beat")
    with pytest.raises(ConfigurationError, match="does not exist"):
        backend.check()


def test_default_state_directory_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_LEADER_URL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    url = default_url()
    assert url == f"file://{tmp_path}/state/celery-leader"
    backend = open_backend(None)
    assert isinstance(backend, FileBackend)
    lock = backend.lock("beat")
    try:
        assert lock.get(1.0) is None
        # reading (status) creates nothing; the start-up check of a candidate creates it
        assert not (tmp_path / "state" / "celery-leader").exists()
        backend.check()
        assert (tmp_path / "state" / "celery-leader").is_dir()
        assert (tmp_path / "state" / "celery-leader").stat().st_mode & 0o777 == 0o700
    finally:
        lock.close()


@pytest.mark.parametrize("name", ["", ".", "..", "../etc/passwd", "a/b", ".hidden", "with space", "x" * 201, "é"])
def test_bad_names_are_refused(backend: FileBackend, name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"A-Z a-z 0-9 \. _ -"):
        backend.lock(name)


@pytest.mark.parametrize("name", ["celery-beat", "a.b_c-1", "X", "v1.2"])
def test_good_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_lock_file_that_is_a_directory_is_refused(backend: FileBackend, lock_dir: Path) -> None:
    (lock_dir / "beat.lock").mkdir()
    with pytest.raises(ConfigurationError, match="is not a regular file"):
        backend.lock("beat")


def test_lease_path_that_is_a_directory_is_unavailable_not_a_crash(backend: FileBackend, lock_dir: Path) -> None:
    (lock_dir / "beat.lease.json").mkdir()
    lock = backend.lock("beat")
    try:
        with pytest.raises(BackendUnavailable, match="is a directory; remove it"):
            lock.get(1.0)
    finally:
        lock.close()


@pytest.fixture
def immutable_dir(lock_dir: Path):
    """A directory in which writes fail even for root (chattr +i); reverted afterwards."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr not installed (e2fsprogs); cannot make a directory unwritable for root")
    done = subprocess.run([chattr, "+i", str(lock_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this file system does not support chattr +i: {done.stderr.strip()}")
    try:
        yield lock_dir
    finally:
        subprocess.run([chattr, "-i", str(lock_dir)], check=True)


def test_read_only_directory_is_refused_at_start(lock_dir: Path, immutable_dir: Path) -> None:
    # chmod does not stop root; an immutable directory does, and the start-up probe write notices
    backend = FileBackend.from_url(f"file://{lock_dir}")  # opening creates nothing: status works
    assert backend.lock("beat").get(1.0) is None
    with pytest.raises(ConfigurationError, match=r"is not writable .*chattr -i"):
        backend.check()


def test_directory_made_read_only_while_running(lock_dir: Path) -> None:
    backend = FileBackend.from_url(f"file://{lock_dir}")
    lock: FileLock = backend.lock("beat")
    try:
        version = lock.create(sample_record(holder="a", transitions=1), 1.0)
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(lock_dir)], capture_output=True).returncode:
            pytest.skip("chattr +i not available here")
        try:
            with pytest.raises(BackendUnavailable, match="cannot write"):
                lock.update(sample_record(holder="b", transitions=2), version, 1.0)
            got = lock.get(1.0)  # the old record is intact, and no temp file is left behind
            assert got is not None and got.version == version and got.record.holder == "a"
            with pytest.raises(ConfigurationError, match="not writable"):
                backend.check()
        finally:
            subprocess.run([chattr, "-i", str(lock_dir)], check=True)
        assert sorted(p.name for p in lock_dir.iterdir()) == ["beat.lease.json", "beat.lock"]
    finally:
        lock.close()


def test_network_file_system_is_warned_about(backend: FileBackend, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from celery_leader.backends import file as file_backend

    assert file_backend._filesystem_type(backend.directory)  # the real mount table names a type here
    caplog.set_level("WARNING", logger="celery_leader")
    backend.check()
    assert not [r for r in caplog.records if "file system" in r.getMessage()]
    monkeypatch.setattr(file_backend, "_filesystem_type", lambda path: "nfs4")
    backend.check()
    assert any("nfs4 file system" in r.getMessage() and "redis://" in r.getMessage() for r in caplog.records)


def test_backend_close_closes_its_locks(backend: FileBackend) -> None:
    lock = backend.lock("beat")
    lock.create(sample_record(), 1.0)
    backend.close()
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        lock.get(1.0)
