"""taskiq: several ``taskiq scheduler`` processes, one of them sends.

taskiq's documentation says to always run only one instance of ``taskiq scheduler``:
each one sends every schedule it reads. :class:`LeaderScheduler` is a
:class:`taskiq.TaskiqScheduler` that sends only while its process leads an election, so
several can run for availability with the usual command::

    # app.py
    scheduler = LeaderScheduler(broker, sources=[LabelScheduleSource(broker)],
                                url="redis://localhost:6379/0")

    taskiq scheduler app:scheduler        # on as many hosts as you like

* The election (:class:`~celery_leader.aio.AsyncElection`) runs as a task of the
  scheduler's own event loop, started in :meth:`startup` (never when the object is built:
  the module is imported by workers too).
* Fail closed: ``on_ready`` sends a schedule only if leadership is valid right then, and
  checks again right before the message is kicked.
* Every message carries the labels ``celery_leader_token`` (the fencing token),
  ``celery_leader_slot`` (the schedule slot, ISO 8601 UTC) and ``celery_leader_election``;
  :func:`message_token` and :func:`message_slot` read them from a task's ``Context``.
* Catch-up ``skip`` (default): every scheduler evaluates the schedules each second (taskiq
  keeps the last run per process), so a new leader does not send what fell due before
  its term began: a cron minute that started earlier, an interval run less than one
  interval after the takeover, a one-off ``time`` in the past. Never twice; a run due
  during the takeover itself is skipped. ``catch_up=True`` sends whatever taskiq finds due.
* SIGTERM: ``taskiq scheduler`` has no handler for it (the process would die without
  releasing); :meth:`startup` turns SIGTERM into the same shutdown as Ctrl-C, and
  :meth:`shutdown` releases the lock, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from taskiq import TaskiqScheduler
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.kicker import AsyncKicker
from taskiq.scheduler.scheduled_task import ScheduledTask
from taskiq.utils import maybe_awaitable

from ..aio import AsyncElection, AsyncLeadership
from ..errors import ConfigurationError
from ._queues import LeaderSettings, safe_name

__all__ = ["LeaderScheduler", "message_token", "message_slot", "LABEL_TOKEN", "LABEL_SLOT", "LABEL_ELECTION"]

log = logging.getLogger(__name__)

LABEL_TOKEN = "celery_leader_token"
LABEL_SLOT = "celery_leader_slot"
LABEL_ELECTION = "celery_leader_election"


def _labels(context_or_message: Any) -> dict[str, Any]:
    message = getattr(context_or_message, "message", context_or_message)
    labels = getattr(message, "labels", None)
    return labels if isinstance(labels, dict) else {}


def message_token(context_or_message: Any) -> int | None:
    """In a task (``context: Context = TaskiqDepends()``): the fencing token it was sent under."""
    value = _labels(context_or_message).get(LABEL_TOKEN)
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def message_slot(context_or_message: Any) -> str | None:
    """In a task: the schedule slot it was sent for (ISO 8601, UTC)."""
    value = _labels(context_or_message).get(LABEL_SLOT)
    return value if isinstance(value, str) else None


def slot_of(task: ScheduledTask, now: datetime) -> datetime:
    """The slot a send belongs to: the minute for cron, the second otherwise (UTC)."""
    now = now.astimezone(timezone.utc).replace(microsecond=0)
    return now.replace(second=0) if task.cron is not None else now


def _interval(task: ScheduledTask) -> float | None:
    if task.interval is None:
        return None
    value = task.interval
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _StandbyQuiet(logging.Filter):
    """Drop taskiq's "Sending task ..." line on a standby (it is logged before ``on_ready``)."""

    def __init__(self, scheduler: LeaderScheduler) -> None:
        super().__init__()
        self.scheduler = scheduler

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Sending task") and self.scheduler.election is not None:
            return self.scheduler._leadership() is not None
        return True


class LeaderScheduler(TaskiqScheduler):
    """A :class:`~taskiq.TaskiqScheduler` that sends only while this process leads ``name``.

    Election options: ``url`` (default ``$CELERY_LEADER_URL``), ``name`` (default
    ``taskiq.<first source's broker class>``; name it), ``identity``, ``lease_duration``
    (15), ``renew_deadline`` (10), ``retry_period`` (2); ``catch_up`` as above.
    """

    def __init__(self, broker: Any, sources: list[Any], *, url: str | None = None, name: str | None = None,
                 identity: str | None = None, lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, catch_up: bool = False) -> None:  # fmt: skip
        super().__init__(broker, sources)
        # validated here, without I/O: a typo stops the import of the scheduler module
        self.leader = LeaderSettings.build(
            name=name or f"taskiq.{safe_name(type(broker).__name__, 'broker')}", url=url, identity=identity,
            lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period,
        )  # fmt: skip
        self.catch_up = catch_up
        self.election: AsyncElection | None = None
        self._term_started: dict[int, float] = {}  # token -> wall-clock start of that term
        self._skipped: set[tuple[int, str]] = set()
        self._main_task: asyncio.Task | None = None
        self._quiet: logging.Filter | None = None

    # --- life cycle ------------------------------------------------------------------

    async def startup(self) -> None:
        await super().startup()
        if self.election is None:
            self.election = AsyncElection(self.leader.name, **self.leader.election_kwargs(),
                                          on_started_leading=self._started, on_new_leader=self._new_leader)  # fmt: skip
            try:
                await self.election.start()
            except ConfigurationError as exc:
                # wrong credentials, an ACL, a bad URL: one line and exit status 2 (as every
                # celery-leader command), not a traceback from inside taskiq's start-up
                self.election = None
                print(f"celery-leader: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            self._install_sigterm()
            self._quiet = _StandbyQuiet(self)
            logging.getLogger("taskiq.cli.scheduler.run").addFilter(self._quiet)
            if self.leader.url_from_default:
                log.warning("celery-leader: no leader URL (nor CELERY_LEADER_URL); using %s, which only schedulers "
                            "on this host share", self.leader.describe)  # fmt: skip
            log.info("celery-leader: scheduler %s standing for %s on %s", self.leader.identity, self.leader.name,
                     self.leader.describe)  # fmt: skip

    async def shutdown(self) -> None:
        election, self.election = self.election, None
        if self._quiet is not None:
            logging.getLogger("taskiq.cli.scheduler.run").removeFilter(self._quiet)
        if election is not None:
            log.info("celery-leader: scheduler stopping; releasing %s", self.leader.name)
            try:
                await election.stop()
            except Exception:  # noqa: BLE001
                log.exception("celery-leader: releasing failed; the lease will expire")
        await super().shutdown()

    def _install_sigterm(self) -> None:
        """SIGTERM ends ``taskiq scheduler`` the way Ctrl-C does (its shutdown path releases)."""
        self._main_task = asyncio.current_task()
        if self._main_task is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        log.info("celery-leader: SIGTERM; stopping the scheduler")
        if self._main_task is not None and not self._main_task.done():
            self._main_task.cancel()

    async def _started(self, leadership: AsyncLeadership) -> None:
        self._term_started.setdefault(leadership.token, time.time())
        log.info("celery-leader: sending schedules (token %d)", leadership.token)

    async def _new_leader(self, identity: str) -> None:
        if identity != self.leader.identity:
            log.info("celery-leader: %s now sends the schedules of %s", identity, self.leader.name)

    # --- sending ---------------------------------------------------------------------

    def _leadership(self) -> AsyncLeadership | None:
        election = self.election
        if election is None:
            return None
        try:
            return election.leadership
        except Exception:  # noqa: BLE001 - an error in the election means "not leader"
            log.exception("celery-leader: reading the election state failed; not sending")
            return None

    def _due_in_term(self, task: ScheduledTask, lead: AsyncLeadership, now: datetime) -> bool:
        """Catch-up ``skip``: was this run due only after the term began (never twice)?"""
        if self.catch_up:
            return True
        began = self._term_started.setdefault(lead.token, time.time())
        if task.cron is not None:
            return slot_of(task, now).timestamp() >= began
        every = _interval(task)
        if every is not None:
            return now.timestamp() - began >= every - 0.5  # taskiq rounds to whole seconds
        if task.time is not None:
            due = task.time if task.time.tzinfo else task.time.replace(tzinfo=timezone.utc)
            return due.timestamp() >= began
        return True

    async def on_ready(self, source: Any, task: ScheduledTask) -> None:
        now = datetime.now(timezone.utc)
        lead = self._leadership()
        if lead is None:
            log.debug("celery-leader: not sending %s: not the leader", task.task_name)
            return
        if not self._due_in_term(task, lead, now):
            key = (lead.token, task.schedule_id)
            if key not in self._skipped:
                self._skipped.add(key)
                log.info("celery-leader: not sending %s: it fell due before this term began (catch-up skip)",
                         task.task_name)  # fmt: skip
            return
        try:
            await maybe_awaitable(source.pre_send(task))
        except ScheduledTaskCancelledError:
            log.info("Scheduled task %s has been cancelled.", task.task_name)
            return
        if not lead.is_valid():  # right before the message goes out (fail closed)
            log.warning("celery-leader: not sending %s: leadership ended", task.task_name)
            return
        labels: dict[str, Any] = {LABEL_TOKEN: lead.token, LABEL_SLOT: slot_of(task, now).isoformat(),
                                  LABEL_ELECTION: lead.name}  # fmt: skip
        kicker: AsyncKicker[Any, Any] = AsyncKicker(task.task_name, self.broker, task.labels).with_labels(
            schedule_id=task.schedule_id, **labels
        )
        await kicker.with_task_id(task_id=task.task_id).kiq(*task.args, **task.kwargs)
        await maybe_awaitable(source.post_send(task))
