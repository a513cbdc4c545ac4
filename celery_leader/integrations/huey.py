"""Huey: many consumers for availability, periodic tasks enqueued by the leading one only.

Every Huey consumer runs a scheduler that enqueues the periodic tasks (unless started with
``-n/--no-periodic``), so two consumers enqueue every periodic task twice. With this
integration every consumer keeps consuming and keeps moving ETA tasks (``schedule()``,
retries with a delay) to the queue (Huey's Redis storage pops those atomically), but only
the consumer that leads the election enqueues periodic tasks:

* ``celery-leader-huey app.huey [huey_consumer options]`` (the ``huey_consumer`` command
  with a leader-guarded scheduler), or
* ``install(huey, url=...)`` where the Huey instance is made, then the usual
  ``huey_consumer app.huey`` or Django's ``manage.py run_huey``.

How it differs from Huey's own scheduler (see docs/huey.md):

* The election runs in its own thread, started by the scheduler thread or process when it
  starts (never when the consumer object is built); a consumer that is stopped (SIGINT,
  SIGTERM, SIGHUP) releases the lock before it exits, so a standby takes over at once.
* Leadership is confirmed right before each periodic task is enqueued (fail closed), and
  each message carries the term's fencing token and its schedule slot in its task id
  (``<uuid>.leader-<token>.slot-<YYYYmmddTHHMMSS>``; read them with :func:`message_token`
  and :func:`message_slot` in a ``context=True`` task). Huey messages have no headers.
* Huey checks periodic tasks once every 60 s *counted from each consumer's start*, so a
  leader change in the middle of a minute could enqueue that minute twice or never. Here
  the leader checks every scheduler tick and, before enqueueing a slot, marks it in the
  lock record (extra key ``celeryLeaderHueySlot``, written with the lock's own
  compare-and-swap through :meth:`Leadership.set_extra`, so only a live term can write
  it). A new leader reads the mark with the record it acquired: it does a minute its
  predecessor had not started, and never one it had.
"""

from __future__ import annotations

import logging
import optparse
import os
import re
import sys
from datetime import datetime, timedelta
from typing import Any

from huey.consumer import Consumer, Scheduler

from ..election import Election
from ..errors import CeleryLeaderError, ConfigurationError
from ._queues import LeaderSettings, safe_name

__all__ = ["LeaderConsumer", "LeaderScheduler", "install", "message_token", "message_slot", "main"]

log = logging.getLogger(__name__)

SLOT_FORMAT = "%Y%m%dT%H%M%S"
#: the lock record's extra key holding the last slot a leader started to enqueue
SLOT_KEY = "celeryLeaderHueySlot"
_STAMP = re.compile(r"\.leader-(\d+)\.slot-(\d{8}T\d{6})$")


def stamp(task_id: str, token: int, slot: str) -> str:
    """The task id a leader gives a periodic task: Huey's id plus token and slot."""
    return f"{task_id}.leader-{token}.slot-{slot}"


def message_token(task: Any) -> int | None:
    """In a ``context=True`` task: the fencing token of the term that enqueued it (else None)."""
    match = _STAMP.search(str(getattr(task, "id", "") or ""))
    return int(match.group(1)) if match else None


def message_slot(task: Any) -> str | None:
    """In a ``context=True`` task: the schedule slot it was enqueued for (``YYYYmmddTHHMMSS``)."""
    match = _STAMP.search(str(getattr(task, "id", "") or ""))
    return match.group(2) if match else None


def slot_start(ts: datetime, seconds: int) -> datetime:
    """The start of the ``seconds``-long slot (a divisor of a day) that contains ``ts``."""
    ts = ts.replace(microsecond=0)
    into_day = ts.hour * 3600 + ts.minute * 60 + ts.second
    return ts - timedelta(seconds=into_day % max(1, int(seconds)))


def _marked(lead: Any) -> str | None:
    """The last slot a leader of this election started to enqueue, from the lock record."""
    record = getattr(lead, "record", None)
    value = (getattr(record, "extra", None) or {}).get(SLOT_KEY)
    if not isinstance(value, str) or not re.fullmatch(r"\d{8}T\d{6}", value):
        return None
    try:  # a mark that is not a date (99999999T999999) sorts above every slot: sending would stop
        datetime.strptime(value, SLOT_FORMAT)
    except ValueError:
        return None
    return value


def default_name(huey: Any) -> str:
    return f"huey.{safe_name(str(getattr(huey, 'name', '') or ''), 'huey')}"


class LeaderScheduler(Scheduler):
    """Huey's scheduler, enqueueing periodic tasks only while this consumer leads.

    ``periodic_task_seconds`` (60, as Huey's) is the slot length: a periodic task is
    enqueued at most once per slot whatever the leader changes.
    """

    def __init__(self, huey: Any, stop_flag: Any, interval: int, periodic: bool, *,
                 settings: LeaderSettings, consumer_pid: int) -> None:  # fmt: skip
        # the base never enqueues periodic tasks itself: this class does, while leading
        super().__init__(huey, stop_flag, interval, periodic=False)
        self.leader_periodic = periodic
        self.settings = settings
        self.election: Election | None = None
        self._consumer_pid = consumer_pid
        self._gave_up = False
        self._state = ""
        self._sent: tuple[int, str] | None = None  # (token, last slot enqueued in that term)

    # --- election --------------------------------------------------------------------

    def initialize(self) -> None:
        super().initialize()
        if self.leader_periodic:
            self._ensure_election()

    def _ensure_election(self) -> Election | None:
        if self.election is not None or self._gave_up:
            return self.election
        election = Election(self.settings.name, **self.settings.election_kwargs(), on_new_leader=self._new_leader)
        try:
            election.start()
        except ConfigurationError as exc:
            # a configuration does not fix itself: keep consuming, never enqueue periodic tasks
            self._gave_up = True
            election.stop()
            log.error("celery-leader: cannot elect %s (%s); this consumer will not enqueue periodic tasks",
                      self.settings.name, exc)  # fmt: skip
            return None
        except Exception as exc:  # noqa: BLE001 - the backend may come back: retry next tick
            election.stop()
            self._note("standby", f" (the election could not start: {type(exc).__name__}; retrying)")
            return None
        self.election = election
        log.info("celery-leader: consumer %s standing for %s on %s", self.settings.identity, self.settings.name,
                 self.settings.describe)  # fmt: skip
        return election

    def _new_leader(self, identity: str) -> None:
        if identity != self.settings.identity:
            log.info("celery-leader: %s now enqueues the periodic tasks of %s", identity, self.settings.name)

    def _note(self, state: str, detail: str = "") -> None:
        if state != self._state:
            self._state = state
            log.info("celery-leader: periodic tasks %s%s", state, detail)

    # --- the scheduler loop ----------------------------------------------------------

    def loop(self, now: datetime | None = None) -> None:
        if self._orphaned():
            log.warning("celery-leader: the consumer process is gone; this scheduler stops")
            self.stop_flag.set()
            return
        if self.leader_periodic:
            try:
                self.enqueue_leader_periodic(now)
            except Exception:  # noqa: BLE001 - never let the scheduler die; fail closed
                log.exception("celery-leader: enqueueing periodic tasks failed; trying again next tick")
        super().loop(now)

    def _orphaned(self) -> bool:
        """A forked scheduler (``-k process``) whose consumer was SIGKILLed."""
        return os.getpid() != self._consumer_pid and os.getppid() != self._consumer_pid

    def enqueue_leader_periodic(self, now: datetime | None = None) -> int:
        """Enqueue this slot's periodic tasks if leading and nobody did yet; returns how many."""
        election = self._ensure_election()
        lead = election.leadership if election is not None else None
        if lead is None:
            holder = election.leader if election is not None else None
            self._note("on standby", f" (leader: {holder})" if holder else "")
            return 0
        self._note("enqueued here", f" (token {lead.token})")
        slot_ts = slot_start(now or self.huey._get_timestamp(), self.periodic_task_seconds)
        slot = slot_ts.strftime(SLOT_FORMAT)
        if self._sent is not None and self._sent[0] == lead.token and self._sent[1] >= slot:
            return 0
        done = _marked(lead)
        if done is not None and done >= slot:
            self._sent = (lead.token, slot)
            return 0
        tasks = self.huey.read_periodic(slot_ts)
        if not tasks:
            return 0
        # write-ahead, with the lock's compare-and-swap: a leader that takes over later in
        # this slot must not enqueue it again, and a deposed one cannot write the mark
        if not lead.set_extra({SLOT_KEY: slot}, timeout=self.settings.timing.renew_deadline):
            log.warning("celery-leader: not enqueueing slot %s: leadership ended before it was marked", slot)
            return 0
        self._sent = (lead.token, slot)
        sent = 0
        for task in tasks:
            if not lead.is_valid():  # right before each message (fail closed)
                log.warning("celery-leader: leadership ended; not enqueueing %s", task.name)
                break
            task.id = stamp(task.id, lead.token, slot)
            log.info("Enqueueing periodic task %s (token %d).", task, lead.token)
            self.huey.enqueue(task)
            sent += 1
        return sent

    def shutdown(self) -> None:
        election, self.election = self.election, None
        self._gave_up = True
        if election is not None:
            log.info("celery-leader: consumer stopping; releasing %s", self.settings.name)
            try:
                election.stop()
            except Exception:  # noqa: BLE001
                log.exception("celery-leader: releasing failed; the lease will expire")
        super().shutdown()


class LeaderConsumer(Consumer):
    """A Huey consumer whose scheduler enqueues periodic tasks only while leading.

    Election options: ``url`` (default ``$CELERY_LEADER_URL``), ``name`` (default
    ``huey.<huey.name>``), ``identity``, ``lease_duration``, ``renew_deadline``,
    ``retry_period``; the other keyword arguments are Huey's consumer options.
    """

    scheduler_class = LeaderScheduler

    def __init__(self, huey: Any, *, url: str | None = None, name: str | None = None, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 **options: Any) -> None:  # fmt: skip
        self.leader = LeaderSettings.build(
            name=name or default_name(huey), url=url, identity=identity,
            lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period,
        )  # fmt: skip
        self._consumer_pid = os.getpid()
        super().__init__(huey, **options)

    def _create_scheduler(self) -> LeaderScheduler:
        return self.scheduler_class(
            huey=self.huey, stop_flag=self.stop_flag, interval=self.scheduler_interval, periodic=self.periodic,
            settings=self.leader, consumer_pid=self._consumer_pid,
        )  # fmt: skip

    def start(self) -> None:
        if self.periodic:
            if self.leader.url_from_default:
                log.warning("celery-leader: no leader URL (nor CELERY_LEADER_URL); using %s, which only consumers "
                            "on this host share", self.leader.describe)  # fmt: skip
            log.info("celery-leader: periodic tasks only while leading %s on %s", self.leader.name,
                     self.leader.describe)  # fmt: skip
        super().start()

    def stop(self, graceful: bool = False) -> None:
        super().stop(graceful=graceful)
        # the scheduler releases the lock when its loop ends; wait for that (bounded), so a
        # stopped consumer hands over at once instead of after a lease
        scheduler = self.scheduler
        try:
            scheduler.join(self.leader.timing.renew_deadline + 2.0)
        except Exception:  # noqa: BLE001 - a scheduler that never started
            log.debug("celery-leader: waiting for the scheduler failed", exc_info=True)


def install(huey: Any, **election: Any) -> Any:
    """Make ``huey.create_consumer()`` build a :class:`LeaderConsumer` (``huey_consumer``, ``run_huey``).

    Options are checked when a consumer is made, so web processes that only import the
    Huey instance never parse them.
    """
    unknown = set(election) - {"url", "name", "identity", "lease_duration", "renew_deadline", "retry_period"}
    if unknown:
        raise ConfigurationError(f"unknown election options {sorted(unknown)} for celery_leader.integrations.huey.install")

    def create_consumer(**options: Any) -> LeaderConsumer:
        return LeaderConsumer(huey, **election, **options)

    huey.create_consumer = create_consumer
    return huey


def _parser() -> optparse.OptionParser:
    from huey.consumer_options import OptionParserHandler

    parser = OptionParserHandler().get_option_parser()
    parser.set_usage("Usage: %prog [options] path.to.huey_instance")
    group = parser.add_option_group(
        "Leader election (celery-leader)",
        "Only the leading consumer enqueues periodic tasks; every consumer keeps consuming.",
    )
    group.add_option("--leader-url", dest="leader_url", help="lock URL (default: $CELERY_LEADER_URL)")
    group.add_option("--leader-name", dest="leader_name", help="election name (default: huey.<huey name>)")
    group.add_option("--leader-identity", dest="leader_identity", help="this consumer's identity")
    for flag, default in (("lease-duration", 15.0), ("renew-deadline", 10.0), ("retry-period", 2.0)):
        group.add_option(f"--{flag}", dest=flag.replace("-", "_"), type="float", default=default,
                         help=f"seconds (default {default:g})")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """``celery-leader-huey app.huey [options]``: ``huey_consumer`` with a leader-guarded scheduler."""
    from huey.bin.huey_consumer import load_huey
    from huey.consumer_options import ConsumerConfig

    parser = _parser()
    options, args = parser.parse_args(argv)
    if len(args) != 1:
        parser.error("give the import path of the Huey instance, e.g. celery-leader-huey app.tasks.huey")
    values = {k: v for k, v in vars(options).items() if v is not None}
    leader = {
        "url": values.pop("leader_url", None),
        "name": values.pop("leader_name", None),
        "identity": values.pop("leader_identity", None),
        "lease_duration": values.pop("lease_duration"),
        "renew_deadline": values.pop("renew_deadline"),
        "retry_period": values.pop("retry_period"),
    }
    try:
        config = ConsumerConfig(**values)
        config.validate()
    except ValueError as exc:
        print(f"celery-leader-huey: {exc}", file=sys.stderr)
        return 2
    try:
        huey = load_huey(args[0])
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"celery-leader-huey: cannot import {args[0]!r} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    config.setup_logger(logging.getLogger("huey"))
    config.setup_logger(logging.getLogger("celery_leader"))
    try:
        consumer = LeaderConsumer(huey, **leader, **config.values)
    except CeleryLeaderError as exc:
        print(f"celery-leader-huey: {exc}", file=sys.stderr)
        return 2
    consumer.run()
    return 0


if __name__ == "__main__":
    # run the imported module's main, so the app and this command share one LeaderScheduler class
    from celery_leader.integrations.huey import main as _main

    sys.exit(_main())
