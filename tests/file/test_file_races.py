"""Compare-and-swap between real processes, and writers killed mid-write."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from celery_leader.backends.file import FileBackend
from celery_leader.lock import Conflict
from celery_leader.testing import sample_record

CTX = multiprocessing.get_context("fork")
T = 5.0


def _create_once(directory: str, name: str, barrier, results) -> None:
    lock = FileBackend(directory).lock(name)
    barrier.wait(30)  # released together, all with the lock open
    try:
        results.put((os.getpid(), lock.create(sample_record(holder=str(os.getpid())), T)))
    except Conflict:
        results.put((os.getpid(), None))
    finally:
        lock.close()


def test_create_race_between_processes_has_one_winner(lock_dir: Path) -> None:
    for round_ in range(4):
        results = CTX.Queue()
        barrier = CTX.Barrier(6)
        procs = [CTX.Process(target=_create_once, args=(str(lock_dir), f"r{round_}", barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=20) for _ in procs]
        for p in procs:
            p.join(20)
            assert p.exitcode == 0
        winners = [(pid, v) for pid, v in outcomes if v is not None]
        assert len(winners) == 1, outcomes
        lock = FileBackend(lock_dir).lock(f"r{round_}")
        got = lock.get(T)
        lock.close()
        assert got is not None and got.version == winners[0][1]
        assert got.record.holder == str(winners[0][0])


#: attempts in which every process reads before any of them writes
FORCED_ROUNDS = 5


def _increment(directory: str, n: int, barrier, results) -> None:
    """Read-modify-CAS ``n`` times; a lost update would show as a low final count.

    The first ``FORCED_ROUNDS`` attempts wait at ``barrier`` between the read and the
    write: every process has read the same version before anyone writes, so each of those
    rounds has exactly one winner and a conflict for every other process - the race is
    forced, not hoped for.
    """
    lock = FileBackend(directory).lock("counter")
    done = conflicts = attempts = 0
    while done < n:
        got = lock.get(T)
        assert got is not None
        if attempts < FORCED_ROUNDS:
            barrier.wait(30)
        attempts += 1
        try:
            lock.update(
                got.record.evolve(transitions=got.record.transitions + 1, holder=str(os.getpid())), got.version, T
            )
        except Conflict:
            conflicts += 1
            continue
        done += 1
    lock.close()
    results.put((done, conflicts))


def test_concurrent_updates_from_processes_lose_nothing(lock_dir: Path) -> None:
    lock = FileBackend(lock_dir).lock("counter")
    lock.create(sample_record(transitions=0), T)
    results = CTX.Queue()
    barrier = CTX.Barrier(4)
    procs = [CTX.Process(target=_increment, args=(str(lock_dir), 40, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    got = lock.get(T)
    lock.close()
    assert got is not None and got.record.transitions == 160
    # each forced round: one winner, three conflicts
    assert sum(c for _, c in outcomes) >= FORCED_ROUNDS * 3, outcomes


def _write_forever(directory: str) -> None:
    lock = FileBackend(directory).lock("crash")
    got = lock.get(T)
    assert got is not None
    version, i = got.version, got.record.transitions
    while True:
        i += 1
        # a big record (still under the 64 KiB a record may have) makes the write window wide
        version = lock.update(sample_record(transitions=i, extra={"padding": "x" * 60_000}), version, T)


def test_writer_killed_mid_write_leaves_a_whole_record_and_no_stuck_lock(lock_dir: Path) -> None:
    lock = FileBackend(lock_dir).lock("crash")
    lock.create(sample_record(transitions=0), T)
    last = 0
    for round_ in range(8):
        p = CTX.Process(target=_write_forever, args=(str(lock_dir),))
        p.start()
        time.sleep(0.15 + 0.03 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        got = lock.get(1.0)  # the kernel dropped the dead writer's flock
        assert got is not None and got.record.decode_error is None, got
        assert got.record.transitions >= last
        last = got.record.transitions
    assert last > 8, "the writer made too little progress to have been killed mid-write"
    # one more write sweeps whatever temp files the killed writers left
    lock2 = FileBackend(lock_dir).lock("crash")
    got = lock2.get(T)
    assert got is not None
    lock2.update(sample_record(transitions=last + 1), got.version, T)
    lock2.close()
    lock.close()
    assert not [p.name for p in lock_dir.iterdir() if p.name.endswith(".tmp")]
