"""taskiq: three real ``taskiq scheduler`` processes on Redis; only the leader sends.

Duplicates are counted from the worker side (a real ``taskiq worker``): the scheduled task
writes the slot and the fencing token from its message labels (``tests/queues/taskiq_app.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from taskiq import AsyncBroker
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.scheduler.scheduled_task import ScheduledTask

from celery_leader.errors import ConfigurationError
from celery_leader.integrations import taskiq as leader_taskiq
from tests.queues.harness import (
    REDIS,
    Fleet,
    assert_each_slot_once,
    kill_stop_term,
    need_redis,
    python,
)

pytestmark = pytest.mark.processes


@pytest.fixture
def queue() -> str:
    need_redis()
    return f"cl-taskiq-{uuid.uuid4().hex[:8]}"


def schedulers(tmp: Path, queue: str) -> Fleet:
    def argv(ident: str, identity: str) -> list[str]:
        if ident == "w":
            return [python(), "-m", "taskiq", "worker", "tests.queues.taskiq_app:broker", "--workers", "1"]
        return [python(), "-c", f"import os, sys; os.environ['TASKIQ_TEST_IDENTITY'] = {identity!r}; "
                "from taskiq.__main__ import main; sys.argv = ['taskiq', 'scheduler', "
                "'tests.queues.taskiq_app:scheduler']; main()"]  # fmt: skip

    env = {"TASKIQ_TEST_QUEUE": queue, "TASKIQ_TEST_LOG": str(tmp / "runs.log"), "TASKIQ_TEST_URL": REDIS}
    return Fleet(tmp, f"taskiq.{queue}", argv, env)


def test_failover_kill_stop_term_no_duplicates(tmp_path: Path, queue: str) -> None:
    fleet = schedulers(tmp_path, queue)
    log = tmp_path / "runs.log"
    fleet.spawn("w")
    fleet.start(3)
    kill_stop_term(fleet, log)  # taskiq has no SIGTERM handler of its own: the wrapper releases
    assert_each_slot_once(log, fleet)
    assert "released the lock" in fleet.output()


# --- in-process: the scheduler object with a broker that records what is kicked ----------


class RecordingBroker(AsyncBroker):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    async def kick(self, message: Any) -> None:
        self.sent.append(message)

    async def listen(self):  # noqa: ANN201
        if False:
            yield b""


class Source:
    def __init__(self, cancel: bool = False) -> None:
        self.cancel, self.pre, self.post = cancel, 0, 0

    async def pre_send(self, task: ScheduledTask) -> None:
        self.pre += 1
        if self.cancel:
            raise ScheduledTaskCancelledError

    async def post_send(self, task: ScheduledTask) -> None:
        self.post += 1


def make(queue: str, **kw: Any) -> leader_taskiq.LeaderScheduler:
    return leader_taskiq.LeaderScheduler(RecordingBroker(), [], url=REDIS, name=f"taskiq.{queue}", identity="me",
                                         lease_duration=1.0, renew_deadline=0.6, retry_period=0.2, **kw)  # fmt: skip


def every_second() -> ScheduledTask:
    return ScheduledTask(task_name="t", labels={}, args=[], kwargs={}, interval=1, schedule_id="s")


def test_sends_only_while_leading_with_labels(queue: str) -> None:
    async def scenario() -> None:
        sched = make(queue, catch_up=True)
        source = Source()
        await sched.on_ready(source, every_second())  # before startup: no election, nothing sent
        assert sched.broker.sent == [] and source.pre == 0
        await sched.startup()
        try:
            assert await sched.election.wait_until_leader(10)
            await sched.on_ready(source, every_second())
            (message,) = sched.broker.sent
            assert message.labels[leader_taskiq.LABEL_TOKEN] == str(sched.election.token)
            assert message.labels[leader_taskiq.LABEL_ELECTION] == f"taskiq.{queue}"
            assert message.labels["schedule_id"] == "s"
            assert source.post == 1

            sched.election.step_down()
            await asyncio.sleep(0.3)
            assert not sched.election.is_leader
            await sched.on_ready(source, every_second())
            assert len(sched.broker.sent) == 1 and source.pre == 1  # fail closed: not even pre_send
        finally:
            await sched.shutdown()

    asyncio.run(scenario())


def test_cancelled_by_source_is_not_sent(queue: str) -> None:
    async def scenario() -> None:
        sched = make(queue, catch_up=True)
        await sched.startup()
        try:
            assert await sched.election.wait_until_leader(10)
            await sched.on_ready(Source(cancel=True), every_second())
            assert sched.broker.sent == []
        finally:
            await sched.shutdown()

    asyncio.run(scenario())


class Lead:
    token = 7
    name = "x"

    def is_valid(self) -> bool:
        return True


def test_catch_up_skip_never_sends_what_fell_due_before_the_term(queue: str) -> None:
    sched = make(queue)
    began = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    sched._term_started[7] = began.timestamp()
    cron = ScheduledTask(task_name="t", labels={}, args=[], kwargs={}, cron="* * * * *")
    # the minute that was under way at the takeover may have been sent by the old leader
    assert not sched._due_in_term(cron, Lead(), began + timedelta(seconds=5))
    assert sched._due_in_term(cron, Lead(), began + timedelta(seconds=31))
    every = ScheduledTask(task_name="t", labels={}, args=[], kwargs={}, interval=10)
    assert not sched._due_in_term(every, Lead(), began + timedelta(seconds=3))
    assert sched._due_in_term(every, Lead(), began + timedelta(seconds=10))
    once = ScheduledTask(task_name="t", labels={}, args=[], kwargs={}, time=began - timedelta(seconds=1))
    assert not sched._due_in_term(once, Lead(), began + timedelta(seconds=1))
    later = ScheduledTask(task_name="t", labels={}, args=[], kwargs={}, time=(began + timedelta(seconds=2)).replace(tzinfo=None))
    assert sched._due_in_term(later, Lead(), began + timedelta(seconds=3))
    assert make(queue, catch_up=True)._due_in_term(cron, Lead(), began)


def test_message_helpers() -> None:
    class M:
        labels = {leader_taskiq.LABEL_TOKEN: "12", leader_taskiq.LABEL_SLOT: "2026-01-01T00:00:00+00:00"}

    class C:
        message = M

    assert leader_taskiq.message_token(C) == 12 and leader_taskiq.message_slot(C) == "2026-01-01T00:00:00+00:00"
    for bad in ({}, {leader_taskiq.LABEL_TOKEN: "x"}, {leader_taskiq.LABEL_TOKEN: True}, None):
        M.labels = bad
        assert leader_taskiq.message_token(C) is None


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"url": "nope://admin:hunter2@127.0.0.1/"}, "nope"),
        ({"url": REDIS, "lease_duration": 1, "renew_deadline": 2}, "lease_duration"),
        ({"url": REDIS, "name": "bad name!"}, "election name"),
        ({"url": REDIS, "retry_period": "soon"}, "seconds"),
    ],
)
def test_bad_configuration_is_one_line(options: dict, expect: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        leader_taskiq.LeaderScheduler(RecordingBroker(), [], **options)
    text = str(info.value)
    assert expect in text and "\n" not in text and "hunter2" not in text


def test_standby_does_not_log_sending(queue: str, caplog: pytest.LogCaptureFixture) -> None:
    """taskiq logs "Sending task" before on_ready; on a standby that line is dropped."""
    import logging

    from celery_leader import Election

    other = Election(f"taskiq.{queue}", url=REDIS, identity="other", lease_duration=1.0, renew_deadline=0.6,
                     retry_period=0.2).start()  # fmt: skip

    async def scenario() -> None:
        sched = make(queue)
        await sched.startup()
        try:
            logging.getLogger("taskiq.cli.scheduler.run").info("Sending task %s with schedule_id %s.", "t", "s")
        finally:
            await sched.shutdown()

    try:
        assert other.wait_until_leader(10)
        with caplog.at_level(logging.INFO):
            asyncio.run(scenario())
        assert "Sending task" not in caplog.text
    finally:
        other.stop()


def test_refused_credentials_are_one_line_exit_2(tmp_path: Path, queue: str) -> None:
    """`taskiq scheduler` with a lock URL whose password Redis refuses: one line naming the
    fix and exit status 2, as every celery-leader command; no traceback, no password."""
    import os
    import subprocess

    url = REDIS.replace("redis://", "redis://someone:hun%2Fter2@", 1)
    env = {**os.environ, "TASKIQ_TEST_QUEUE": queue, "TASKIQ_TEST_LOG": str(tmp_path / "runs.log"),
           "TASKIQ_TEST_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    result = subprocess.run([python(), "-m", "taskiq", "scheduler", "tests.queues.taskiq_app:scheduler"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "refused the credentials" in result.stderr
    assert "ter2" not in result.stdout + result.stderr
