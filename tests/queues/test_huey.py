"""Huey: three real consumers on Redis; only the leader enqueues periodic tasks.

Duplicates are counted from the worker side: the periodic task writes its slot and the
fencing token it was enqueued under (``tests/queues/huey_app.py``, 1-s slots).
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from huey import MemoryHuey

from celery_leader import Election
from celery_leader.errors import ConfigurationError
from celery_leader.integrations import huey as leader_huey
from celery_leader.integrations._queues import LeaderSettings
from tests.queues.harness import (
    REDIS,
    TIMING,
    Fleet,
    assert_each_slot_once,
    duplicates,
    holder,
    kill_stop_term,
    need_redis,
    python,
    runs,
    wait_for,
    wait_runs,
)  # fmt: skip

pytestmark = pytest.mark.processes


def consumers(tmp: Path, queue: str, extra: tuple[str, ...] = ()) -> Fleet:
    def argv(ident: str, identity: str) -> list[str]:
        return [python(), "-m", "celery_leader.integrations.huey", "tests.queues.huey_app.huey",
                "--leader-url", REDIS, "--leader-identity", identity, *TIMING, "-w", "2", *extra]  # fmt: skip

    env = {"HUEY_TEST_NAME": queue, "HUEY_TEST_LOG": str(tmp / "runs.log")}
    return Fleet(tmp, f"huey.{queue}", argv, env)


@pytest.fixture
def queue() -> str:
    need_redis()
    return f"cl-huey-{uuid.uuid4().hex[:8]}"


def test_failover_kill_stop_term_no_duplicates(tmp_path: Path, queue: str) -> None:
    fleet = consumers(tmp_path, queue).start(3)
    log = tmp_path / "runs.log"
    kill_stop_term(fleet, log)
    records = assert_each_slot_once(log, fleet)
    assert len({r["pid"] for r in records}) >= 2  # workers of several consumers ran them


def test_standby_consumes_but_never_enqueues_periodic(tmp_path: Path, queue: str) -> None:
    """While someone else leads, a consumer runs queued tasks but enqueues no periodic task."""
    from huey import RedisHuey

    from tests.queues import huey_app

    other = Election(f"huey.{queue}", url=REDIS, identity="someone-else", lease_duration=1.0, renew_deadline=0.6,
                     retry_period=0.2).start()  # fmt: skip
    fleet = consumers(tmp_path, queue)
    try:
        assert other.wait_until_leader(10)
        fleet.spawn("c0")
        # a task put on this queue by hand (as a producer would) is executed by the standby
        task = huey_app.tick.s()
        task.id = leader_huey.stamp(task.id, 0, "20000101T000000")
        RedisHuey(queue, url=REDIS).storage.enqueue(huey_app.huey.serialize_task(task))
        wait_for(lambda: runs(tmp_path / "runs.log"), 20, "the standby to execute a queued task")
        time.sleep(2.5)  # two more slots pass with the lock held elsewhere
        assert [r["slot"] for r in runs(tmp_path / "runs.log")] == ["20000101T000000"]
        assert holder(f"huey.{queue}") == "someone-else"
        other.stop()  # released: the consumer takes over and starts enqueueing
        wait_runs(tmp_path / "runs.log", 2)
        assert holder(f"huey.{queue}") == "c0.0"
    finally:
        other.stop()
        fleet.stop()


def test_no_periodic_flag_never_elects(tmp_path: Path, queue: str) -> None:
    """``-n`` keeps Huey's meaning: no periodic tasks, so no election either."""
    fleet = consumers(tmp_path, queue, extra=("-n",))
    try:
        proc = fleet.spawn("c0")
        wait_for(lambda: "Periodic tasks are disabled" in fleet.output(), 20, "the consumer to start")
        time.sleep(2.0)
        assert proc.poll() is None
        assert holder(f"huey.{queue}") == ""
        assert runs(tmp_path / "runs.log") == []
    finally:
        fleet.stop()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--leader-url", "nope://admin:hunter2@127.0.0.1/"], "nope"),
        (["--leader-url", REDIS, "--lease-duration", "1", "--renew-deadline", "2"], "lease_duration"),
        (["--leader-url", REDIS, "--leader-name", "bad name!"], "election name"),
        (["--leader-url", REDIS, "--lease-duration", "soon"], "invalid floating-point"),
    ],
)
def test_bad_configuration_is_one_line(tmp_path: Path, args: list[str], expect: str) -> None:
    proc = subprocess.run([python(), "-m", "celery_leader.integrations.huey", "tests.queues.huey_app.huey", *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                          env={**__import__("os").environ, "HUEY_TEST_LOG": str(tmp_path / "x")})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_missing_or_broken_app_path(tmp_path: Path) -> None:
    for args in ([], ["no_such_module.huey"]):
        proc = subprocess.run([python(), "-m", "celery_leader.integrations.huey", *args],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr


def _scheduler(huey: MemoryHuey, name: str, identity: str) -> leader_huey.LeaderScheduler:
    settings = LeaderSettings.build(name=name, url=REDIS, identity=identity, lease_duration=1.0, renew_deadline=0.6,
                                    retry_period=0.2)  # fmt: skip
    import os
    import threading

    scheduler = leader_huey.LeaderScheduler(huey, threading.Event(), 1, True, settings=settings,
                                            consumer_pid=os.getpid())  # fmt: skip
    scheduler.periodic_task_seconds = 60  # Huey's (the test app lowers the class default)
    return scheduler


def test_handover_inside_a_slot_does_not_repeat_it(queue: str) -> None:
    """A leader taking over in the middle of a minute skips that minute if it was enqueued."""
    huey = MemoryHuey(queue)

    @huey.periodic_task(lambda ts: True)
    def job() -> None:
        pass

    minute = datetime(2026, 1, 1, 12, 30, 15)
    a, b = _scheduler(huey, queue, "a"), _scheduler(huey, queue, "b")
    try:
        a.initialize()
        wait_for(lambda: a.election.is_leader, 10, "a to lead")
        assert a.enqueue_leader_periodic(minute) == 1
        assert a.enqueue_leader_periodic(minute + timedelta(seconds=30)) == 0  # same slot
        first = huey.dequeue()
        assert leader_huey.message_slot(first) == "20260101T123000"
        token_a = leader_huey.message_token(first)

        b.initialize()
        a.shutdown()  # releases; b takes over within the same minute
        wait_for(lambda: b.election.is_leader, 10, "b to lead")
        assert b.enqueue_leader_periodic(minute + timedelta(seconds=40)) == 0
        assert a.enqueue_leader_periodic(minute + timedelta(seconds=60)) == 0  # a no longer leads
        assert b.enqueue_leader_periodic(minute + timedelta(seconds=60)) == 1
        second = huey.dequeue()
        assert leader_huey.message_slot(second) == "20260101T123100"
        assert leader_huey.message_token(second) > token_a
        assert huey.dequeue() is None
    finally:
        a.shutdown()
        b.shutdown()


def test_lost_leadership_between_slots_enqueues_nothing(queue: str) -> None:
    """Fail closed: after the term ends (here: the lock is taken away), nothing is enqueued."""
    huey = MemoryHuey(queue)

    @huey.periodic_task(lambda ts: True)
    def job() -> None:
        pass

    a = _scheduler(huey, queue, "a")
    try:
        a.initialize()
        wait_for(lambda: a.election.is_leader, 10, "a to lead")
        a.election.step_down()
        wait_for(lambda: not a.election.is_leader, 10, "a to step down")
        assert a.enqueue_leader_periodic(datetime(2026, 1, 1, 0, 0)) == 0
        assert huey.dequeue() is None
    finally:
        a.shutdown()


@pytest.mark.parametrize("garbage", [["not", "a", "slot"], 20260101, "99999999T999999x", "99999999T999999", "\x00" * 300])
def test_unreadable_slot_mark_is_overwritten_not_fatal(queue: str, garbage: object) -> None:
    from celery_leader import LeaderRecord, open_backend

    huey = MemoryHuey(queue)

    @huey.periodic_task(lambda ts: True)
    def job() -> None:
        pass

    backend = open_backend(REDIS)
    try:  # a record someone else wrote, with a mark this code cannot read
        backend.lock(queue).create(LeaderRecord(extra={leader_huey.SLOT_KEY: garbage}), 2.0)
    finally:
        backend.close()
    a = _scheduler(huey, queue, "a")
    try:
        a.initialize()
        wait_for(lambda: a.election.is_leader, 10, "a to lead")
        assert a.enqueue_leader_periodic(datetime(2026, 1, 1, 0, 0)) == 1
        assert leader_huey._marked(a.election.leadership) == "20260101T000000"
    finally:
        a.shutdown()


def test_message_helpers_and_install() -> None:
    class T:
        id = "x.leader-12.slot-20260101T000000"

    assert leader_huey.message_token(T) == 12
    assert leader_huey.message_slot(T) == "20260101T000000"
    for bad in (None, "", "abc", "x.leader-.slot-1", "x.leader-1.slot-2026"):
        T.id = bad
        assert leader_huey.message_token(T) is None and leader_huey.message_slot(T) is None

    huey = MemoryHuey("install-test")
    with pytest.raises(ConfigurationError, match="unknown election options"):
        leader_huey.install(huey, lease=3)
    leader_huey.install(huey, url="memory://", lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    consumer = huey.create_consumer(workers=1)
    assert isinstance(consumer, leader_huey.LeaderConsumer)
    assert consumer.leader.name == "huey.install-test"


def test_process_workers_orphaned_scheduler_releases_and_stops(tmp_path: Path, queue: str) -> None:
    """``-k process``: SIGKILL of the consumer leaves a forked scheduler; it releases and stops."""
    from tests.queues.harness import _children

    fleet = consumers(tmp_path, queue, extra=("-k", "process"))
    try:
        proc = fleet.spawn("c0")
        fleet.leader()
        wait_runs(tmp_path / "runs.log", 1)
        children = _children(proc.pid)
        assert children
        proc.kill()  # the consumer only, not its children
        proc.wait(10)
        wait_for(lambda: holder(f"huey.{queue}") == "", 20, "the orphaned scheduler to release")
        from celery_leader.testing.cluster import wait_dead

        assert all(wait_dead(pid, 20) for pid in children), f"left running: {children}\n{fleet.output()}"
    finally:
        fleet.stop()


def test_install_makes_hueys_own_command_elect(tmp_path: Path, queue: str) -> None:
    """``install(huey)`` in the app module: the unchanged ``huey_consumer`` command elects."""

    def argv(ident: str, identity: str) -> list[str]:
        return [python(), "-c", f"import os, sys; os.environ['HUEY_TEST_IDENTITY'] = {identity!r}; "
                "from huey.bin.huey_consumer import consumer_main; "
                "sys.argv = ['huey_consumer', 'tests.queues.huey_app.huey', '-w', '2']; consumer_main()"]  # fmt: skip

    env = {"HUEY_TEST_NAME": queue, "HUEY_TEST_LOG": str(tmp_path / "runs.log"), "HUEY_TEST_INSTALL": "1"}
    fleet = Fleet(tmp_path, f"huey.{queue}", argv, env).start(2)
    log = tmp_path / "runs.log"
    try:
        first = fleet.leader()
        wait_runs(log, 2)
        fleet.signal(first, signal.SIGTERM)
        assert fleet.procs[first].wait(15) == 0
        fleet.leader(exclude=[first])
        wait_runs(log, 2)
    finally:
        fleet.stop()
    records = runs(log)
    assert not duplicates(records) and all(r["token"] is not None for r in records)
    assert len({r["token"] for r in records}) == 2
