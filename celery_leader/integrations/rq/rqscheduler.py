"""rq-scheduler (``rqscheduler``) on every host; only the leader moves due jobs.

rq-scheduler's own lock is ``SET rq:scheduler_lock NX EX interval+10``, taken before and
deleted after each cycle without checking who owns it: a cycle longer than
``interval + 10`` s lets a second instance in, which moves the same jobs again, and the
first one's ``remove_lock`` then deletes the second one's lock (rq-scheduler #312).

:class:`LeaderScheduler` replaces that lock with an election that renews in its own
thread. ``acquire_lock()`` answers "is leadership confirmed right now"; each job is moved
only after leadership is confirmed again right before it, carrying the term's fencing
token in ``job.meta``; the push to the queue, the removal from the schedule and the
rescheduling of a repeating job happen in one MULTI/EXEC, so a leader killed half-way
can never leave a job that its successor pushes a second time. The schedule itself lives
in Redis (``rq:scheduler:scheduled_jobs``), so a new leader simply continues from it:
jobs that fell due during the failover are moved once, when it takes over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from rq_scheduler import Scheduler  # type: ignore[import-untyped]
from rq_scheduler.utils import get_next_scheduled_time, to_unix  # type: ignore[import-untyped]

from ...lock import Backend
from .config import LeaderConfig, check_url, election_name, leader_config, stamp, with_name
from .guard import TermGuard, start_guard, stop_guard

__all__ = ["LeaderScheduler", "DEFAULT_NAME"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "rq.rqscheduler"


class LeaderScheduler(Scheduler):
    """``rq_scheduler.Scheduler`` that moves jobs only while elected (see the module docstring)."""

    leader_election: dict[str, Any] | None = None

    def __init__(self, *args: Any, leader: dict[str, Any] | None = None, rq_settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        explicit = {**(self.leader_election or {}), **(leader or {})}
        default = DEFAULT_NAME
        if self.scheduled_jobs_key != Scheduler.scheduled_jobs_key:
            default = election_name(DEFAULT_NAME, self.scheduled_jobs_key)  # another schedule, another election
        self.leader_config: LeaderConfig = with_name(leader_config(explicit, rq_settings=rq_settings), default)
        check_url(self.leader_config)
        self._guard: TermGuard | None = None
        self._backend: Backend | None = None
        self._wake = threading.Event()

    @property
    def election(self) -> Any:
        return self._guard.election if self._guard is not None else None

    # --- the election ------------------------------------------------------------------

    def start_election(self) -> None:
        if self._guard is not None:
            return
        conf = self.leader_config
        guard, backend = start_guard(conf.name or DEFAULT_NAME, conf, self.connection, wake=self._wake, what="rq-scheduler")
        self._guard, self._backend = guard, backend
        self.log.info(
            "celery-leader: rq-scheduler %s standing for %s on %s", conf.identity, guard.name, backend.describe()
        )

    def stop_election(self) -> None:
        guard, backend = self._guard, self._backend
        self._guard = self._backend = None
        stop_guard(guard, backend, self.log, "rq-scheduler")

    def _confirmed(self) -> Any:
        guard = self._guard
        if guard is None:
            return None
        lead = guard.current()
        if lead is not None and lead.token != guard.loaded_term:
            guard.loaded_term = lead.token  # the schedule lives in Redis: nothing to reload
            guard.note("leading", lead.token)
        return guard.confirmed()

    # --- rq-scheduler's lock API -------------------------------------------------------

    def acquire_lock(self) -> bool:
        """True while this instance is the confirmed leader (no TTL key is taken)."""
        self._lock_acquired = self._confirmed() is not None
        return self._lock_acquired

    def remove_lock(self) -> None:
        """Leadership is kept between cycles and released by :meth:`stop_election`."""
        self._lock_acquired = False

    # --- moving jobs -------------------------------------------------------------------

    def enqueue_jobs(self) -> list[Any]:
        moved = []
        for job in self.get_jobs_to_queue():
            lead = self._confirmed()  # right before this job goes out
            if lead is None:
                self.log.warning("celery-leader: not moving scheduled jobs: leadership ended (fail closed)")
                break
            job.meta = stamp(job.meta, lead, time.time())
            self.enqueue_job(job)
            moved.append(job)
        return moved

    def enqueue_job(self, job: Any) -> None:
        """rq-scheduler's ``enqueue_job`` in one MULTI/EXEC (push, unschedule, reschedule)."""
        if getattr(job, "has_rate_limit", False) or getattr(job, "_dependency_ids", None):
            return super().enqueue_job(job)  # RQ refuses pipelines for these: its own path
        interval = job.meta.get("interval")
        repeat = job.meta.get("repeat")
        cron_string = job.meta.get("cron_string")
        use_local_timezone = job.meta.get("use_local_timezone")
        if repeat:
            job.meta["repeat"] = int(repeat) - 1
        queue = self.get_queue_for_job(job)
        with self.connection.pipeline() as pipe:
            queue.enqueue_job(job, pipeline=pipe, at_front=bool(job.enqueue_at_front))
            pipe.zrem(self.scheduled_jobs_key, job.id)
            finished = repeat is not None and job.meta["repeat"] == 0
            if interval and not finished:
                pipe.zadd(self.scheduled_jobs_key, {job.id: to_unix(_utcnow()) + int(interval)})
            elif cron_string and not finished:
                upcoming = get_next_scheduled_time(cron_string, use_local_timezone=use_local_timezone)
                pipe.zadd(self.scheduled_jobs_key, {job.id: to_unix(upcoming)})
            pipe.execute()

    # --- the loop ----------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """rq-scheduler's loop with the election around it; a standby wakes when elected."""
        self.register_birth()
        self._install_signal_handlers()
        try:
            self.start_election()
            if burst:
                self._guard.election.wait_until_leader(self.leader_config.timing.retry_period * 2)  # type: ignore[union-attr]
            while True:
                self.heartbeat()
                started = time.time()
                if self.acquire_lock():
                    self.enqueue_jobs()
                    self.heartbeat()
                    if burst:
                        self.log.info("RQ scheduler done, quitting")
                        break
                elif burst:
                    self.log.info("RQ scheduler not elected; burst run quits without moving jobs")
                    break
                pause = self._interval - (time.time() - started)
                if pause > 0:
                    self._wake.wait(pause)
                    self._wake.clear()
        finally:
            self.stop_election()
            with contextlib.suppress(Exception):
                self.register_death()


def _utcnow() -> datetime:
    """rq-scheduler's naive-UTC "now" (its to_unix treats naive times as UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
