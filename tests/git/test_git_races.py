"""Races, crashed writers, empty repositories and servers that go away."""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

import pytest

from celery_leader.backends.git import GitBackend
from celery_leader.lock import BackendUnavailable, Conflict
from celery_leader.testing.contract import race, sample_record

from .conftest import Servers, daemon, git

TIMEOUT = 5.0


@pytest.mark.parametrize(("transport", "rounds"), [("file", 20), ("daemon", 20), ("http", 8)])
def test_eight_writers_from_the_same_commit_one_winner_per_round(git_servers: Servers, transport: str, rounds: int) -> None:
    """8 clients read the same commit and push; the server's ref always ends at the one winner."""
    repo = git_servers.new_repo()
    url = git_servers.url(transport, repo)
    locks = [GitBackend.from_url(url).lock("race") for _ in range(8)]
    version = locks[0].create(sample_record(transitions=0), TIMEOUT)
    kinds: collections.Counter[str] = collections.Counter()
    for round_ in range(1, rounds + 1):
        seen = [lock.get(TIMEOUT) for lock in locks]
        assert {s.version for s in seen if s} == {version}
        def write(i: int, round_: int = round_, expected: str = version) -> tuple[int, str]:
            return i, locks[i].update(sample_record(holder=f"w{i}", transitions=round_), expected, TIMEOUT)

        results, errors = race(8, write)
        kinds.update("server" if "lost the race" in str(e) else "client" for e in errors)
        assert len(results) == 1, (round_, results, errors)
        assert all(isinstance(e, Conflict) for e in errors), errors
        winner, version = results[0]
        # the server's own view, not ours
        assert git(repo, "rev-parse", "refs/celery-leader/race") == version
        assert f'"holderIdentity":"w{winner}"' in git(repo, "show", "refs/celery-leader/race:race.lock.json")
    assert git(repo, "rev-list", "--count", "refs/celery-leader/race") == "1"
    print(f"conflicts seen by the {transport} losers: {dict(kinds)}")


@pytest.mark.parametrize("transport", ["file", "daemon", "http"])
def test_empty_repository(git_servers: Servers, transport: str) -> None:
    repo = git_servers.new_repo("empty")
    backend = GitBackend.from_url(git_servers.url(transport, repo))
    backend.check(TIMEOUT)
    lock = backend.lock("beat")
    assert lock.get(TIMEOUT) is None
    v = lock.create(sample_record(), TIMEOUT)
    got = lock.get(TIMEOUT)
    assert got is not None and got.version == v
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/celery-leader/beat"


@pytest.mark.parametrize("transport", ["file", "daemon", "http"])
def test_lost_race_then_acquire(git_servers: Servers, transport: str) -> None:
    """The loser of a push race keeps working: it reads the winner's commit and takes over from it."""
    repo = git_servers.new_repo()
    url = git_servers.url(transport, repo)
    a, b = GitBackend.from_url(url).lock("beat"), GitBackend.from_url(url).lock("beat")
    assert a.get(TIMEOUT) is None and b.get(TIMEOUT) is None
    va = a.create(sample_record(holder="a", transitions=1), TIMEOUT)
    with pytest.raises(Conflict):
        b.create(sample_record(holder="b", transitions=1), TIMEOUT)
    # a renews; b's view is now two versions old
    va2 = a.update(sample_record(holder="a", transitions=1), va, TIMEOUT)
    with pytest.raises(Conflict):
        b.update(sample_record(holder="b", transitions=2), va, TIMEOUT)
    seen = b.get(TIMEOUT)
    assert seen is not None and seen.version == va2 and seen.record.holder == "a"
    vb = b.update(seen.record.evolve(holder="b", transitions=2), seen.version, TIMEOUT)
    with pytest.raises(Conflict):
        a.update(sample_record(holder="a", transitions=1), va2, TIMEOUT)
    got = a.get(TIMEOUT)
    assert got is not None and got.version == vb and got.record.holder == "b" and got.record.transitions == 2


def _ref_lock(repo: Path, name: str, age: float, content: bytes = b"") -> Path:
    lockfile = repo / "refs" / "celery-leader" / f"{name}.lock"
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    lockfile.write_bytes(content)
    then = time.time() - age
    os.utime(lockfile, (then, then))
    return lockfile


def test_stale_ref_lock_of_a_crashed_writer_is_removed(git_servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    repo = git_servers.new_repo()
    lock = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    v1 = lock.create(sample_record(), TIMEOUT)
    lockfile = _ref_lock(repo, "beat", age=3600, content=b"0" * 40 + b"\n")
    with caplog.at_level(logging.WARNING, logger="celery_leader"):
        v2 = lock.update(sample_record(transitions=4), v1, TIMEOUT)
    assert not lockfile.exists()
    assert not list(lockfile.parent.glob("*.stale-*"))
    assert git(repo, "rev-parse", "refs/celery-leader/beat") == v2
    assert any("stale ref lock" in r.getMessage() and "crashed" in r.getMessage() for r in caplog.records)


def test_fresh_ref_lock_is_a_lost_race_and_left_alone(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    lock = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    v1 = lock.create(sample_record(), TIMEOUT)
    lockfile = _ref_lock(repo, "beat", age=0.0, content=b"f" * 40 + b"\n")
    with pytest.raises(Conflict, match="another candidate"):
        lock.update(sample_record(transitions=4), v1, TIMEOUT)
    assert lockfile.read_bytes() == b"f" * 40 + b"\n"
    assert git(repo, "rev-parse", "refs/celery-leader/beat") == v1
    # creating another lock's ref is not affected by this one's lock file
    other = GitBackend.from_url(f"git+file://{repo}").lock("other")
    other.create(sample_record(), TIMEOUT)


def test_stale_bound_follows_the_option(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    lock = GitBackend.from_url(f"git+file://{repo}?stale_lock=0.5").lock("beat")
    v1 = lock.create(sample_record(), TIMEOUT)
    _ref_lock(repo, "beat", age=0.0)
    with pytest.raises(Conflict):
        lock.update(sample_record(transitions=4), v1, TIMEOUT)
    time.sleep(0.7)
    lock.update(sample_record(transitions=4), v1, TIMEOUT)


def test_crashed_create_leaves_lock_then_recovers(git_servers: Servers) -> None:
    """A writer died between taking the lock and creating the ref: create works once it is stale."""
    repo = git_servers.new_repo()
    _ref_lock(repo, "beat", age=60.0)
    lock = GitBackend.from_url(f"git+file://{repo}").lock("beat")
    assert lock.get(TIMEOUT) is None
    lock.create(sample_record(), TIMEOUT)
    assert lock.get(TIMEOUT) is not None


def test_server_going_away_and_coming_back(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    with daemon(git_servers.root) as (_proc, port):
        lock = GitBackend.from_url(f"git://127.0.0.1:{port}/{repo.name}").lock("beat")
        v1 = lock.create(sample_record(), TIMEOUT)
    started = time.monotonic()
    for call in (lambda: lock.get(60.0), lambda: lock.update(sample_record(), v1, 60.0)):
        with pytest.raises(BackendUnavailable):
            call()
    assert time.monotonic() - started < 10.0  # refused at once: waiting out the timeouts would take two minutes
    with daemon(git_servers.root, port=port):
        got = lock.get(TIMEOUT)
        assert got is not None and got.version == v1
        lock.update(sample_record(transitions=4), v1, TIMEOUT)


def test_http_server_going_away(git_servers: Servers) -> None:
    from .conftest import http_bridge

    repo = git_servers.new_repo()
    with http_bridge(git_servers.root) as (_proc, port):
        lock = GitBackend.from_url(f"git+http://127.0.0.1:{port}/{repo.name}").lock("beat")
        lock.create(sample_record(), TIMEOUT)
    with pytest.raises(BackendUnavailable):
        lock.get(2.0)


def test_many_renewals_keep_the_ref_at_one_commit(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    lock = GitBackend.from_url(git_servers.url("daemon", repo)).lock("beat")
    v = lock.create(sample_record(), TIMEOUT)
    for n in range(40):
        v = lock.update(sample_record(transitions=3, renew_time=1_700_000_000 + n), v, TIMEOUT)
    assert git(repo, "rev-list", "--count", "--all") == "1"
    git(repo, "gc", "--prune=now", "--quiet")
    count = dict(line.split(": ") for line in git(repo, "count-objects", "-v").splitlines())
    assert int(count["in-pack"]) == 3 and int(count["count"]) == 0


def test_local_repository_maintained_by_git_gc_meanwhile(git_servers: Servers) -> None:
    """`git gc` packs our objects and refs between calls of a long-lived backend: nothing breaks."""
    repo = git_servers.new_repo()
    backend = GitBackend.from_url(f"git+file://{repo}")
    lock = backend.lock("beat")
    v = lock.create(sample_record(), TIMEOUT)
    for n in range(5):
        v = lock.update(sample_record(transitions=4 + n), v, TIMEOUT)
    git(repo, "gc", "--quiet", "--prune=now")
    git(repo, "pack-refs", "--all")
    assert not (repo / "refs" / "celery-leader" / "beat").exists()  # now only in packed-refs
    fresh = backend.lock("beat")
    got = fresh.get(TIMEOUT)
    assert got is not None and got.version == v and got.record.transitions == 8
    with pytest.raises(Conflict):
        fresh.update(sample_record(), "0" * 40, TIMEOUT)
    v2 = fresh.update(sample_record(transitions=9), v, TIMEOUT)
    assert git(repo, "rev-parse", "refs/celery-leader/beat") == v2
    backend.close()
