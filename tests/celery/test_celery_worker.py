"""Singleton queues: two workers with ``--leader-queues``; one consumes at a time; it dies, the other takes over."""

from __future__ import annotations

import signal
import time

import pytest

from .harness import Deployment

pytestmark = pytest.mark.processes


def send(broker: str, queue: str, seqs, sleep: float) -> None:
    from celery import Celery

    client = Celery("client", broker=broker)
    try:
        for i in seqs:
            client.send_task("tests.celery.app.record", args=("single", i, sleep), queue=queue)
    finally:
        client.close()


def wait_for(predicate, timeout: float, what: str, dep: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}\n{dep.tails()}")


def consuming(dep: Deployment, name: str) -> bool:
    return "consuming" in dep.log_text(name)


def two_workers(dep: Deployment, single: str) -> tuple[str, str]:
    """w1 and w2 on the leader queue ``single``: (the one consuming it, the one standing by).

    Returns once the other has seen the first hold the queue's lock (it logs "<leader> leads
    <queue>: standing by" when its election reads the lock held): it is in the election
    and retrying, not still starting up, however slowly this machine starts a worker.
    """
    for name in ("w1", "w2"):
        dep.worker(name, "--leader-queues", single, CLT_IDENTITY=name)
    wait_for(lambda: consuming(dep, "w1") or consuming(dep, "w2"), 60, "a worker consuming the leader queue", dep)
    first = "w1" if consuming(dep, "w1") else "w2"
    other = "w2" if first == "w1" else "w1"
    standby = f"celery-leader: {first} leads {single}: standing by"
    wait_for(lambda: standby in dep.log_text(other), 60, f"{other} logging {standby!r}", dep)
    return first, other


def test_one_worker_consumes_a_leader_queue_at_a_time(tmp_path, lock_url, redis_broker):
    with Deployment(tmp_path / "run", lock_url, redis_broker, CLT_WORKER_STEP="1") as dep:
        single = dep.queue + "-single"
        first, other = two_workers(dep, single)
        assert not consuming(dep, other), "both workers consume the singleton queue"

        send(redis_broker, single, range(10), 0.1)
        wait_for(lambda: len(dep.runs("single")) >= 4, 20, "singleton tasks running", dep)
        t_kill = time.time()
        dep.signal(first, signal.SIGKILL)
        dep.procs[first].wait(10)
        send(redis_broker, single, range(100, 110), 0.05)
        wait_for(
            lambda: sum(r["seq"] >= 100 for r in dep.runs("single")) >= 10, 30, "the second worker taking over", dep
        )

        runs = sorted(dep.runs("single"), key=lambda r: r["start"])
        before = [r for r in runs if r["start"] < t_kill]
        assert before and {r["worker"] for r in before} == {first}, runs
        assert {r["worker"] for r in runs if r["seq"] >= 100} == {other}
        # never two workers running singleton tasks at the same time
        for a, b in zip(runs, runs[1:]):
            assert b["start"] >= a["end"] - 0.001, f"overlapping runs: {a} {b}"
        # tasks sent before the kill and not yet taken run on the new leader, exactly once
        seqs = [r["seq"] for r in runs]
        assert len(seqs) == len(set(seqs)), f"a task ran twice: {seqs}"
        missing = sorted(set(range(10)) - set(seqs))
        # with the Redis transport, a message the killed worker had prefetched comes back
        # only after the visibility timeout (1 h): at most the one in flight plus one prefetched
        assert len(missing) <= 2, missing


def test_graceful_shutdown_hands_the_queue_over(tmp_path, lock_url, redis_broker):
    """SIGTERM: the leader stops consuming, finishes its task, releases; the other starts at once."""
    with Deployment(tmp_path / "run", lock_url, redis_broker, CLT_WORKER_STEP="1") as dep:
        single = dep.queue + "-single"
        first, other = two_workers(dep, single)
        send(redis_broker, single, range(6), 0.3)
        wait_for(lambda: len(dep.runs("single")) >= 1, 20, "a singleton task", dep)
        t_term = time.time()
        assert dep.terminate(first, 30) == 0
        wait_for(lambda: len(dep.runs("single")) >= 6, 30, "all singleton tasks", dep)
        runs = sorted(dep.runs("single"), key=lambda r: r["start"])
        assert sorted(r["seq"] for r in runs) == list(range(6)), runs
        assert {r["worker"] for r in runs if r["start"] > t_term + 0.5} <= {other}
        for a, b in zip(runs, runs[1:]):
            assert b["start"] >= a["end"] - 0.001, f"overlapping runs: {a} {b}"
        assert consuming(dep, other)
