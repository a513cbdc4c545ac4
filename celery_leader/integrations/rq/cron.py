"""RQ's cron scheduler (``rq cron``, RQ >= 2.5) on every host; only the leader enqueues.

:class:`LeaderCronScheduler` is a :class:`rq.cron.CronScheduler` whose loop enqueues only
while this process is the elected leader:

* the election starts in :meth:`start` (never in ``__init__``) and runs in its own thread;
* each cron job is enqueued only if leadership is confirmed right before it, and carries
  the term's fencing token in ``job.meta`` (:func:`celery_leader.integrations.rq.sent_token`);
* on every new term the schedule is reloaded from what RQ keeps in Redis: the newest entry
  of each cron job's history (``rq:cron_job:<name>:jobs``, written in the same pipeline as
  the enqueue itself) is its last run, whoever ran it. Runs that fell due during the
  failover are then run once (``catch_up="once"``, the default) or skipped to the next
  slot (``"skip"``). Either way a slot is never enqueued twice.
* SIGTERM/SIGINT stop the loop (RQ's own handlers), then the lock is released, so a
  standby takes over at once.

Cron jobs are told apart by their ``name`` (RQ's default: the function's import path), so
two registrations with one name are refused: the new leader could not tell them apart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

from rq.cron import CronJob, CronScheduler
from rq.exceptions import StopRequested
from rq.logutils import setup_loghandlers
from rq.utils import now

from ...errors import ConfigurationError
from ...lock import Backend
from .config import LeaderConfig, check_url, leader_config, stamp, with_name
from .guard import TermGuard, start_guard, stop_guard

__all__ = ["LeaderCronScheduler", "DEFAULT_NAME"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "rq.cron"


class LeaderCronScheduler(CronScheduler):
    """``CronScheduler`` that enqueues only while elected (see the module docstring).

    ``leader`` holds the election settings (``URL``, ``NAME``, ``LEASE_DURATION``,
    ``CATCH_UP``...; see :mod:`celery_leader.integrations.rq.config`); a subclass may set
    them as the class attribute ``leader_election``.
    """

    leader_election: dict[str, Any] | None = None

    def __init__(
        self,
        connection: Any = None,
        logging_level: str | int = logging.INFO,
        name: str = "",
        *,
        leader: dict[str, Any] | None = None,
        rq_settings: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(connection, logging_level=logging_level, name=name, **kwargs)
        setup_loghandlers(level=logging_level, name="celery_leader")  # only if nothing is configured
        explicit = {**(self.leader_election or {}), **(leader or {})}
        # configuration first and without I/O: a typo stops the command before anything runs
        self.leader_config: LeaderConfig = with_name(leader_config(explicit, rq_settings=rq_settings), DEFAULT_NAME)
        self.catch_up = self.leader_config.catch_up or "once"
        check_url(self.leader_config)
        self._wake = threading.Event()
        self._guard: TermGuard | None = None
        self._backend: Backend | None = None

    # --- the election -----------------------------------------------------------------

    @property
    def election(self) -> Any:
        return self._guard.election if self._guard is not None else None

    def _start_election(self) -> None:
        self._check_names()
        conf = self.leader_config
        guard, backend = start_guard(conf.name or DEFAULT_NAME, conf, self.connection, wake=self._wake, what="cron scheduler")
        self._guard, self._backend = guard, backend
        timing = conf.timing
        self.log.info(
            "celery-leader: cron scheduler %s standing for %s on %s (lease %ss, retry %ss, catch-up %s)",
            conf.identity, guard.name, backend.describe(), timing.lease_duration, timing.retry_period, self.catch_up,
        )

    def _stop_election(self) -> None:
        guard, backend = self._guard, self._backend
        self._guard = self._backend = None
        stop_guard(guard, backend, self.log, "cron scheduler")

    def _check_names(self) -> None:
        counts = Counter(job.name for job in self._cron_jobs)
        shared = sorted(name for name, n in counts.items() if n > 1)
        if shared:
            raise ConfigurationError(
                f"cron jobs share the name(s) {', '.join(shared)}: give each register() call its own name= "
                "so that a new leader can tell from RQ's job history when each one last ran"
            )

    # --- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """RQ's cron loop, plus the election around it (same signals, birth and death)."""
        self.log.info("CronScheduler %s: starting...", self.name)
        self._install_signal_handlers()
        self.register_birth()
        try:
            try:
                self._start_election()
                while True:
                    enqueued = self.enqueue_jobs()
                    if enqueued:
                        self.save()
                    self.heartbeat()
                    pause = self.calculate_sleep_interval()
                    if pause > 0:
                        self._wake.wait(pause)
                        self._wake.clear()
            except KeyboardInterrupt:
                self.log.info("CronScheduler %s: received KeyboardInterrupt", self.name)
            except StopRequested:
                self.log.info("CronScheduler %s: stop requested", self.name)
            finally:
                self._stop_election()
        finally:
            with contextlib.suppress(Exception):
                self.register_death()
            self.log.info("CronScheduler %s: shutdown complete", self.name)

    def calculate_sleep_interval(self) -> float:
        """A standby looks again every ``retry_period``; a leader sleeps as RQ does."""
        guard = self._guard
        if guard is None or guard.confirmed() is None:
            return self.leader_config.timing.retry_period
        return min(super().calculate_sleep_interval(), 60.0)

    def enqueue_jobs(self) -> list[CronJob]:
        """Enqueue the due jobs, each only if leadership is confirmed right before it."""
        guard = self._guard
        if guard is None:
            return []
        lead = guard.current()
        if lead is None:
            return []
        if lead.token != guard.loaded_term:
            try:
                self._begin_term(lead.token)
            except Exception:  # noqa: BLE001 - without the shared state we cannot lead safely
                self.log.exception("celery-leader: could not reload the cron schedule on takeover; not enqueuing yet")
                return []
            guard.loaded_term = lead.token
            guard.note("leading", lead.token)
        enqueue_time = now()
        enqueued: list[CronJob] = []
        for job in self._cron_jobs:
            if not job.should_run():
                continue
            lead = guard.confirmed()  # again, right before this job goes out
            if lead is None:
                self.log.warning("celery-leader: not enqueuing %s: leadership ended (fail closed)", job.name)
                break
            self._enqueue_stamped(job, lead)
            job.set_enqueue_time(enqueue_time)
            enqueued.append(job)
        return enqueued

    def _enqueue_stamped(self, job: CronJob, lead: Any) -> Any:
        """RQ's own ``CronJob.enqueue`` with the fencing token added to ``job.meta``."""
        options = job.job_options
        had_meta = "meta" in options
        saved = options.get("meta")
        options["meta"] = stamp(saved, lead, time.time())
        try:
            return job.enqueue(self.connection)
        finally:
            if had_meta:
                options["meta"] = saved
            else:
                options.pop("meta", None)

    # --- takeover ----------------------------------------------------------------------

    def last_enqueue_times(self) -> dict[str, datetime | None]:
        """Each cron job's last enqueue time as RQ recorded it in Redis (any scheduler's)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for job in self._cron_jobs:
                pipe.zrange(job.job_history_key, -1, -1, withscores=True)
            replies = pipe.execute()
        result: dict[str, datetime | None] = {}
        for job, reply in zip(self._cron_jobs, replies):
            result[job.name] = datetime.fromtimestamp(float(reply[0][1]), timezone.utc) if reply else None
        return result

    def _begin_term(self, token: int) -> None:  # noqa: ARG002 - the token is for subclasses
        """Load every job's last run from Redis, then apply the catch-up policy."""
        current = now()
        caught_up, skipped = [], []
        lasts = self.last_enqueue_times()
        for job in self._cron_jobs:
            last = lasts.get(job.name)
            if last is not None:
                job.latest_enqueue_time = last
                job.next_enqueue_time = job.get_next_enqueue_time()
            elif job.cron:
                # never ran anywhere (or its history expired): the next slot from now
                job.latest_enqueue_time = None
                job.next_enqueue_time = job.get_next_enqueue_time()
            else:
                job.latest_enqueue_time = None
                job.next_enqueue_time = None  # RQ: an interval job that never ran runs now
                continue
            if job.next_enqueue_time is not None and job.next_enqueue_time <= current:
                if self.catch_up == "skip":
                    job.next_enqueue_time = _next_after(job, current)
                    skipped.append(job.name)
                else:
                    caught_up.append(job.name)
        if caught_up:
            self.log.info("celery-leader: catch-up 'once': running %s once now", ", ".join(caught_up))
        if skipped:
            self.log.info("celery-leader: catch-up 'skip': not running %s until its next slot", ", ".join(skipped))


def _next_after(job: CronJob, current: datetime) -> datetime:
    """The first slot of ``job`` strictly after ``current`` (its phase kept for intervals)."""
    if job.cron:
        latest = job.latest_enqueue_time
        job.latest_enqueue_time = current
        try:
            return job.get_next_enqueue_time()
        finally:
            job.latest_enqueue_time = latest
    assert job.interval and job.latest_enqueue_time is not None
    elapsed = (current - job.latest_enqueue_time).total_seconds()
    steps = max(1, math.floor(elapsed / job.interval) + 1)
    return job.latest_enqueue_time + timedelta(seconds=steps * job.interval)
