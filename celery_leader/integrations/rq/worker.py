"""``rq worker --with-scheduler`` on every host; only elected schedulers move due jobs.

RQ's built-in scheduler (:class:`rq.scheduler.RQScheduler`, run by the worker in a forked
process) takes one Redis key per queue with a TTL of ``interval + 60`` s and refreshes it
from its own loop, between enqueue cycles. A cycle (or a pause) longer than the TTL lets a
second worker's scheduler take the key and move the same due jobs again.

Here every ``--with-scheduler`` worker starts a scheduler process, and that process stands
in **one election per queue** (``rq.scheduler.<queue>``, all sharing one backend
connection). The election renews in its own thread, so no cycle length can let a second
scheduler in; the jobs of a queue are moved only while its election is confirmed, checked
again before every batch, and each moved job carries the term's fencing token in
``job.meta``. Per queue and not per queue *set*: two workers listening to ``a,b`` and
``b,c`` must never both move ``b``'s jobs, which is exactly why RQ's own locks are per queue.

Use it as ``rq worker -w celery_leader.integrations.rq.LeaderWorker --with-scheduler``.
Every worker that runs a scheduler for these queues must use it (a plain RQ worker would
still take RQ's TTL lock and move jobs on its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any

from rq.job import Job
from rq.logutils import setup_loghandlers
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp, now, utcformat
from rq.worker import SimpleWorker, SpawnWorker, Worker

from ...errors import ConfigurationError
from ...lock import Backend
from .config import LeaderConfig, check_url, election_name, leader_config, open_lock_backend, stamp
from .guard import TermGuard

__all__ = ["LeaderRQScheduler", "LeaderSchedulerMixin", "LeaderWorker", "LeaderSimpleWorker", "LeaderSpawnWorker"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "rq.scheduler"
#: due jobs moved per pipeline; leadership is confirmed again before each batch
BATCH = 100
PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the forked scheduler process: get ``sig`` when the worker dies (Linux), so an
    orphaned scheduler never keeps leading for a dead worker; it releases and exits."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # pragma: no cover - the worker died before prctl took effect
        os.kill(os.getpid(), sig)


class LeaderRQScheduler(RQScheduler):
    """``RQScheduler`` whose per-queue TTL locks are replaced by elections."""

    def __init__(self, queues: Any, connection: Any, *args: Any, leader: LeaderConfig | None = None, **kwargs: Any) -> None:
        super().__init__(queues, connection, *args, **kwargs)
        self.leader_config = leader if leader is not None else leader_config()
        self._guards: dict[str, TermGuard] = {}
        self._backend: Backend | None = None
        self._wake = threading.Event()

    # --- RQ's lock API, answered without RQ's locks ----------------------------------------

    @property
    def should_reacquire_locks(self) -> bool:
        return False

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        """Every worker runs a scheduler process; its elections decide which queues it moves."""
        self._acquired_locks = set(self._queue_names)
        self._scheduled_job_registries = []
        self.lock_acquisition_time = datetime.now()  # type: ignore[assignment]
        if auto_start and (not self._process or not self._process.is_alive()):
            self.start()
        return set(self._acquired_locks)

    def release_locks(self) -> None:
        self._acquired_locks = set()

    def heartbeat(self) -> None:
        """Only the metadata hash (``rq info`` shows the scheduler); no lock is refreshed here."""
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
            pipe.expire(self.key, int(self.interval) + 60)
            pipe.execute()

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        self._stop_requested = True
        self._wake.set()

    # --- elections ---------------------------------------------------------------------

    def queue_elections(self) -> dict[str, str]:
        """queue name -> election name."""
        conf = self.leader_config
        prefix = conf.name or (f"{conf.prefix}.{DEFAULT_PREFIX}" if conf.prefix else DEFAULT_PREFIX)
        return {queue: election_name(prefix, queue) for queue in sorted(self._queue_names)}

    def start_elections(self) -> None:
        if self._guards:
            return
        conf = self.leader_config
        backend = open_lock_backend(conf, self.connection)
        self._backend = backend
        try:
            for queue, name in self.queue_elections().items():
                guard = TermGuard(name, conf, backend, wake=self._wake, what=f"scheduler {conf.identity}")
                self._guards[queue] = guard
                guard.start()
        except BaseException:
            self.stop_elections()
            raise
        self.log.info(
            "celery-leader: scheduler %s standing for %s on %s",
            conf.identity, ", ".join(g.name for g in self._guards.values()), backend.describe(),
        )

    def stop_elections(self) -> None:
        guards, self._guards = list(self._guards.values()), {}
        threads = [threading.Thread(target=g.stop, daemon=True) for g in guards]
        for t in threads:  # release all queues at once, not one renew deadline after another
            t.start()
        for t in threads:
            t.join()
        backend, self._backend = self._backend, None
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()

    # --- the loop ----------------------------------------------------------------------

    def work(self) -> None:
        _die_with_parent()
        self.leader_config = self.leader_config.for_this_process()
        self._install_signal_handlers()
        self.register_birth()
        try:
            try:
                self.start_elections()
            except ConfigurationError as exc:
                # one line, not a traceback from the scheduler process; the worker keeps working
                self.log.error("celery-leader: %s; this worker's scheduler stops", exc)
                return
            while not self._stop_requested:
                self.heartbeat()
                self.enqueue_scheduled_jobs()
                self._wake.wait(self.interval)
                self._wake.clear()
        finally:
            self.stop()

    def stop(self) -> None:
        self.log.info("Scheduler stopping, releasing %s", ", ".join(g.name for g in self._guards.values()) or "nothing")
        self.stop_elections()
        self.release_locks()
        self._status = self.Status.STOPPED
        with contextlib.suppress(Exception):
            self.register_death()

    def run_burst(self, wait: float | None = None) -> int:
        """``rq worker --burst --with-scheduler``: move due jobs once if elected within ``wait``."""
        self.register_birth()
        moved = 0
        try:
            try:
                self.start_elections()
            except ConfigurationError as exc:
                print(f"celery-leader: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None  # as every celery-leader command: one line, exit 2
            limit = wait if wait is not None else self.leader_config.timing.retry_period * 2
            for guard in self._guards.values():
                guard.election.wait_until_leader(limit)
            moved = self.enqueue_scheduled_jobs()
        finally:
            self.stop()
        return moved

    def enqueue_scheduled_jobs(self) -> int:
        """Move the due jobs of every queue whose election this process leads right now."""
        self._status = self.Status.WORKING
        moved = 0
        try:
            for queue_name, guard in list(self._guards.items()):
                lead = guard.current()
                if lead is None:
                    continue
                if lead.token != guard.loaded_term:
                    # the due jobs live in Redis (ScheduledJobRegistry): nothing to reload
                    guard.loaded_term = lead.token
                    guard.note("leading", lead.token)
                moved += self._move_due(queue_name, guard)
        finally:
            self._status = self.Status.STARTED
        return moved

    def _move_due(self, queue_name: str, guard: TermGuard) -> int:
        registry = ScheduledJobRegistry(queue_name, connection=self.connection, serializer=self.serializer)
        queue = Queue(queue_name, connection=self.connection, serializer=self.serializer)
        job_ids = registry.get_jobs_to_schedule(current_timestamp())
        moved = 0
        for start in range(0, len(job_ids), BATCH):
            ids = job_ids[start : start + BATCH]
            jobs = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
            lead = guard.confirmed()  # right before this batch goes out
            if lead is None:
                self.log.warning("celery-leader: not moving due jobs of %s: leadership ended (fail closed)", queue_name)
                return moved
            sent_at = datetime.now().timestamp()
            limited = []
            with self.connection.pipeline() as pipe:
                for job_id, job in zip(ids, jobs):
                    if job is None:
                        registry.remove(job_id, pipeline=pipe)
                    elif getattr(job, "has_rate_limit", False):
                        limited.append(job)
                    else:
                        job.meta = stamp(job.meta, lead, sent_at)
                        queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                        registry.remove(job.id, pipeline=pipe)
                        moved += 1
                pipe.execute()
            for job in limited:
                if guard.confirmed() is None:
                    return moved
                job.meta = stamp(job.meta, lead, sent_at)
                with self.connection.pipeline() as pipe:
                    registry.remove(job.id, pipeline=pipe)
                    queue._enqueue_rate_limited_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                    pipe.execute()
                moved += 1
        return moved


class LeaderSchedulerMixin:
    """For any RQ worker class: ``--with-scheduler`` runs :class:`LeaderRQScheduler`.

    Election settings: a ``leader_election`` dict on a subclass, else the other sources of
    :func:`celery_leader.integrations.rq.config.leader_config` (Django settings, environment).
    """

    scheduler_class: type[LeaderRQScheduler] = LeaderRQScheduler
    leader_election: dict[str, Any] | None = None

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
    ) -> None:
        config = leader_config(self.leader_election)  # validated in the worker: a typo stops it here
        check_url(config)
        me: Any = self
        level = logging_level if logging_level is not None else me.log.level
        setup_loghandlers(level=level, date_format=date_format, log_format=log_format, name="celery_leader")
        me.scheduler = self.scheduler_class(
            me.queues,
            connection=me.connection,
            logging_level=logging_level if logging_level is not None else me.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=me.serializer,
            leader=config,
        )
        if burst:
            me.scheduler.run_burst()
        else:
            me.scheduler.acquire_locks(auto_start=True)


class LeaderWorker(LeaderSchedulerMixin, Worker):
    """``rq.Worker`` (forking) with the leader-elected scheduler."""


class LeaderSimpleWorker(LeaderSchedulerMixin, SimpleWorker):
    """``rq.SimpleWorker`` (no fork per job) with the leader-elected scheduler."""


class LeaderSpawnWorker(LeaderSchedulerMixin, SpawnWorker):
    """``rq.SpawnWorker`` with the leader-elected scheduler."""
