"""Dramatiq + periodiq: three real ``celery-leader-periodiq`` schedulers and a real
``dramatiq`` worker on Redis; only the leader sends.

Duplicates are counted from the worker side: the actor writes the slot and the fencing
token from its message options (``tests/queues/periodiq_app.py``, 1-s slots).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import dramatiq
import pendulum
import pytest
from dramatiq.brokers.stub import StubBroker
from periodiq import PeriodiqMiddleware, cron

from celery_leader.errors import ConfigurationError
from celery_leader.integrations import periodiq as leader_periodiq
from tests.queues.harness import (
    REDIS,
    TIMING,
    Fleet,
    assert_each_slot_once,
    kill_stop_term,
    need_redis,
    python,
    wait_for,
)

pytestmark = pytest.mark.processes


@pytest.fixture
def queue() -> str:
    need_redis()
    return f"cl-periodiq-{uuid.uuid4().hex[:8]}"


def schedulers(tmp: Path, queue: str) -> Fleet:
    def argv(ident: str, identity: str) -> list[str]:
        if ident == "w":
            return [python(), "-m", "dramatiq", "tests.queues.periodiq_app", "-p", "1", "-t", "2"]
        return [python(), "-m", "celery_leader.integrations.periodiq", "tests.queues.periodiq_app",
                "--leader-url", REDIS, "--leader-name", f"periodiq.{queue}", "--leader-identity", identity,
                *TIMING, "--slot-seconds", "1"]  # fmt: skip

    env = {"PERIODIQ_TEST_QUEUE": queue, "PERIODIQ_TEST_LOG": str(tmp / "runs.log")}
    return Fleet(tmp, f"periodiq.{queue}", argv, env)


def test_failover_kill_stop_term_no_duplicates(tmp_path: Path, queue: str) -> None:
    fleet = schedulers(tmp_path, queue)
    log = tmp_path / "runs.log"
    fleet.spawn("w")
    fleet.start(3)
    kill_stop_term(fleet, log)  # periodiq itself has no SIGTERM handler: the wrapper releases
    assert_each_slot_once(log, fleet)
    assert "released the lock" in fleet.output()


# --- in-process: the loop's one-slot step against a stub broker ---------------------------


@pytest.fixture
def actors():  # noqa: ANN201
    broker = StubBroker()
    broker.add_middleware(PeriodiqMiddleware())
    dramatiq.set_broker(broker)

    @dramatiq.actor(periodic=cron("*/5 * * * *"), broker=broker)
    def every_five() -> None:
        pass

    @dramatiq.actor(periodic=cron("* * * * *"), broker=broker)
    def every_minute() -> None:
        pass

    broker.declare_queue("default")
    return broker, [every_five, every_minute]


def make(queue: str, actors: list, identity: str = "me") -> leader_periodiq.LeaderPeriodiq:
    return leader_periodiq.LeaderPeriodiq(actors, url=REDIS, name=f"periodiq.{queue}", identity=identity,
                                          lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)  # fmt: skip


def test_one_slot_sends_due_actors_once_with_options(queue: str, actors) -> None:  # noqa: ANN001
    broker, declared = actors
    sched = make(queue, declared)
    later = pendulum.now().add(minutes=10).replace(second=0, microsecond=0)
    slot = later.subtract(minutes=later.minute % 5)  # both actors due
    assert sched.tick(slot) == 0  # not started: nothing
    sched.start()
    try:
        wait_for(lambda: sched.election.is_leader, 10, "leadership")
        assert sched.tick(slot) == 2
        assert sched.tick(slot) == 0  # the same slot again in this term: nothing
        assert sched.tick(slot.add(minutes=1)) == 1  # only every_minute
        messages = broker.queues["default"].queue  # a deque of encoded messages
        assert len(messages) == 3
        message = dramatiq.Message.decode(messages[0])
        assert leader_periodiq.message_token(message) == sched.election.token
        assert leader_periodiq.message_slot(message) == slot.isoformat()
        assert message.options["scheduled_at"] == str(slot)  # periodiq's middleware reads it

        sched.election.step_down()
        wait_for(lambda: not sched.election.is_leader, 10, "the step-down")
        assert sched.tick(slot.add(minutes=2)) == 0  # fail closed
    finally:
        sched.close()


def test_the_slot_mark_moves_with_the_lock(queue: str, actors) -> None:  # noqa: ANN001
    """A new leader sends the slot under way unless its predecessor marked it, never twice."""
    broker, declared = actors
    a, b = make(queue, declared, "a"), make(queue, declared, "b")
    minute = pendulum.now().add(hours=1).replace(minute=0, second=0, microsecond=0)  # both actors due
    try:
        a.start()
        wait_for(lambda: a.election.is_leader, 10, "a to lead")
        assert a.tick(minute) == 2
        record = leader_periodiq._marked(a.election.leadership)
        assert record == minute.in_timezone("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        b.start()
        a.close()  # releases: b takes over inside the same minute
        wait_for(lambda: b.election.is_leader, 10, "b to lead")
        assert b.tick(minute) == 0  # a started it
        assert b.tick(minute.add(minutes=1)) == 1
        b.close()

        c = make(queue, declared, "c")  # a third term: the mark came through the release
        c.start()
        try:
            wait_for(lambda: c.election.is_leader, 10, "c to lead")
            assert c.tick(minute.add(minutes=1)) == 0
            assert c.tick(minute.add(minutes=2)) == 1  # not marked yet: sent at once
        finally:
            c.close()
        assert len(broker.queues["default"].queue) == 4
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("garbage", ["not-a-slot", "zzzz", "9999", ["x"], 20260101, "2026-13-45T99:99:99Z"])
def test_unreadable_slot_mark_does_not_stop_sending(queue: str, actors, garbage: object) -> None:  # noqa: ANN001
    """A mark this code cannot read is not a slot: the leader sends, and its own mark replaces it."""
    from celery_leader import LeaderRecord, open_backend

    _, declared = actors
    backend = open_backend(REDIS)
    try:  # a record someone else wrote, with a mark that is not a slot
        backend.lock(f"periodiq.{queue}").create(LeaderRecord(extra={leader_periodiq.SLOT_KEY: garbage}), 2.0)
    finally:
        backend.close()
    sched = make(queue, declared)
    minute = pendulum.now().add(hours=1).replace(minute=0, second=0, microsecond=0)  # both actors due
    sched.start()
    try:
        wait_for(lambda: sched.election.is_leader, 10, "leadership")
        assert sched.tick(minute) == 2
        assert leader_periodiq._marked(sched.election.leadership) == minute.in_timezone("UTC").strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    finally:
        sched.close()


def test_configuration_errors(queue: str, actors) -> None:  # noqa: ANN001
    _, declared = actors
    with pytest.raises(ConfigurationError, match="no periodic actor"):
        leader_periodiq.LeaderPeriodiq([], url=REDIS)
    with pytest.raises(ConfigurationError, match="slot_seconds"):
        leader_periodiq.LeaderPeriodiq(declared, url=REDIS, slot_seconds=7)
    with pytest.raises(ConfigurationError) as info:
        leader_periodiq.LeaderPeriodiq(declared, url="nope://admin:hunter2@127.0.0.1/")
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["tests.queues.periodiq_app", "--leader-url", "nope://admin:hunter2@127.0.0.1/"], "nope"),
        (["tests.queues.periodiq_app", "--leader-url", REDIS, "--lease-duration", "1", "--renew-deadline", "2"],
         "lease_duration"),
        (["tests.queues.periodiq_app", "--leader-url", REDIS, "--slot-seconds", "7"], "slot_seconds"),
        (["no_such_module_here", "--leader-url", REDIS], "cannot import"),
    ],
)
def test_command_bad_input_is_one_line(tmp_path: Path, args: list[str], expect: str) -> None:
    proc = subprocess.run([python(), "-m", "celery_leader.integrations.periodiq", *args], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                          env={**__import__("os").environ, "PERIODIQ_TEST_LOG": str(tmp_path / "x")})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
