"""arq: every worker consumes; only the leading one enqueues the cron jobs.

arq has no separate scheduler: each worker with ``cron_jobs`` enqueues them, and the job id
``<name>:<unix ms of the run>`` deduplicates (see docs/integrations.md#arq). That holds
while every worker enqueues a run before it finished, or while its result is kept
(``keep_result``, 0 by default for cron jobs). A worker whose view of time lags (a clock
behind, a blocked event loop, a pause: arq keeps ``next_run`` across it) enqueues runs
that already finished, and they run again about a minute later. With this integration one
worker enqueues; the others only keep their ``next_run`` in step:

    celery-leader-arq app.WorkerSettings --leader-url redis://localhost:6379/0

(arq's ``arq app.WorkerSettings`` with :class:`LeaderWorker`), or ``LeaderWorker(...)``
from code. ``leader_url``, ``leader_name``... may also be attributes of WorkerSettings.

* The election (:class:`~celery_leader.aio.AsyncElection`) runs in the worker's event
  loop, started by :meth:`LeaderWorker.main` (not when the worker object is built).
* Fail closed: ``run_cron`` enqueues only while leadership is valid right then.
* A new leader skips runs that fell due before its term began; arq's own job-id check
  stays underneath (a run the old leader enqueued ahead of time is refused).
* Stopping (SIGINT/SIGTERM, handled by arq) releases the lock in :meth:`close`.
* arq jobs have no headers, and extra keyword arguments would reach the function, so the
  fencing token is not on the message; :func:`current_token` gives it to code in the
  worker that enqueued.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from typing import Any

from arq.worker import Worker, get_kwargs

from ..aio import AsyncElection, AsyncLeadership
from ..errors import CeleryLeaderError
from ._queues import LeaderSettings, safe_name

__all__ = ["LeaderWorker", "create_leader_worker", "main"]

log = logging.getLogger(__name__)

#: WorkerSettings attributes read by :func:`create_leader_worker` (LeaderWorker's own options)
SETTINGS = ("leader_url", "leader_name", "leader_identity", "leader_lease_duration", "leader_renew_deadline",
            "leader_retry_period")  # fmt: skip


class LeaderWorker(Worker):
    """An arq :class:`~arq.worker.Worker` whose cron jobs are enqueued only while it leads.

    Election options: ``leader_url`` (default ``$CELERY_LEADER_URL``), ``leader_name``
    (default ``arq.<queue name>``), ``leader_identity``, ``leader_lease_duration`` (15),
    ``leader_renew_deadline`` (10), ``leader_retry_period`` (2); the rest are arq's.
    """

    def __init__(self, *args: Any, leader_url: str | None = None, leader_name: str | None = None,
                 leader_identity: str | None = None, leader_lease_duration: float = 15.0,
                 leader_renew_deadline: float = 10.0, leader_retry_period: float = 2.0, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.leader = LeaderSettings.build(
            name=leader_name or f"arq.{safe_name(str(self.queue_name), 'queue')}", url=leader_url,
            identity=leader_identity, lease_duration=leader_lease_duration, renew_deadline=leader_renew_deadline,
            retry_period=leader_retry_period,
        )  # fmt: skip
        self.election: AsyncElection | None = None
        self._term_started: dict[int, float] = {}
        self._state = ""

    async def main(self) -> None:
        if self.cron_jobs and self.election is None:
            self.election = AsyncElection(self.leader.name, **self.leader.election_kwargs(),
                                          on_started_leading=self._started, on_new_leader=self._new_leader)  # fmt: skip
            await self.election.start()
            log.info("celery-leader: worker %s standing for the cron jobs of %s on %s", self.leader.identity,
                     self.leader.name, self.leader.describe)  # fmt: skip
        await super().main()

    async def close(self) -> None:
        election, self.election = self.election, None
        if election is not None:
            log.info("celery-leader: worker stopping; releasing %s", self.leader.name)
            try:
                await election.stop()
            except Exception:  # noqa: BLE001
                log.exception("celery-leader: releasing failed; the lease will expire")
        await super().close()

    async def _started(self, leadership: AsyncLeadership) -> None:
        self._term_started.setdefault(leadership.token, time.time())
        log.info("celery-leader: enqueueing the cron jobs here (token %d)", leadership.token)

    async def _new_leader(self, identity: str) -> None:
        if identity != self.leader.identity:
            log.info("celery-leader: %s now enqueues the cron jobs of %s", identity, self.leader.name)

    @property
    def token(self) -> int | None:
        """The fencing token while this worker leads, else ``None``."""
        return self.election.token if self.election is not None else None

    async def run_cron(self, n: datetime, delay: float, num_windows: int = 2) -> None:
        election = self.election
        lead = election.leadership if election is not None else None
        if lead is None:
            self._follow(n, delay * num_windows)
            return
        began = self._term_started.setdefault(lead.token, time.time())
        for job in self.cron_jobs:
            # catch-up skip: a run due before this term may have been enqueued by the old leader
            while job.next_run is not None and job.next_run.timestamp() < began:
                job.calculate_next(job.next_run)
        if not lead.is_valid():  # right before the enqueues (fail closed)
            return
        await super().run_cron(n, delay, num_windows)

    def _follow(self, n: datetime, window: float) -> None:
        """A standby keeps ``next_run`` current, so that it never enqueues old runs later."""
        cutoff = n.timestamp() + window
        for job in self.cron_jobs:
            if job.next_run is None:
                job.calculate_next(n)
            while job.next_run is not None and job.next_run.timestamp() < cutoff:
                job.calculate_next(job.next_run)


def create_leader_worker(settings: Any, **overrides: Any) -> LeaderWorker:
    """Like arq's ``create_worker``: Worker options and ``leader_*`` attributes from ``settings``."""
    source = settings if isinstance(settings, dict) else vars(settings)
    options = {**get_kwargs(settings), **{k: source[k] for k in SETTINGS if k in source}}
    options.update({k: v for k, v in overrides.items() if v is not None})
    return LeaderWorker(**options)


def main(argv: list[str] | None = None) -> int:
    """``celery-leader-arq app.WorkerSettings``: arq's worker command with :class:`LeaderWorker`."""
    from arq.logs import default_log_config
    from arq.utils import import_string

    parser = argparse.ArgumentParser(prog="celery-leader-arq", description=main.__doc__)
    parser.add_argument("worker_settings", help="import path of the WorkerSettings class")
    parser.add_argument("--burst", action="store_true", default=None, help="exit once no jobs are found")
    parser.add_argument("-v", "--verbose", action="store_true")
    group = parser.add_argument_group("leader election (celery-leader)")
    group.add_argument("--leader-url", help="lock URL (default: WorkerSettings.leader_url, $CELERY_LEADER_URL)")
    group.add_argument("--leader-name", help="election name (default: arq.<queue name>)")
    group.add_argument("--leader-identity", help="this worker's identity")
    group.add_argument("--lease-duration", type=float, help="seconds (default 15)")
    group.add_argument("--renew-deadline", type=float, help="seconds (default 10)")
    group.add_argument("--retry-period", type=float, help="seconds (default 2)")
    args = parser.parse_args(argv)
    import logging.config

    sys.path.append(os.getcwd())
    logging.config.dictConfig(default_log_config(args.verbose))
    logging.getLogger("celery_leader").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not logging.getLogger("celery_leader").handlers:
        logging.getLogger("celery_leader").addHandler(logging.StreamHandler())
    try:
        settings = import_string(args.worker_settings)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"celery-leader-arq: cannot import {args.worker_settings!r} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    try:
        worker = create_leader_worker(
            settings, burst=args.burst, leader_url=args.leader_url, leader_name=args.leader_name,
            leader_identity=args.leader_identity, leader_lease_duration=args.lease_duration,
            leader_renew_deadline=args.renew_deadline, leader_retry_period=args.retry_period,
        )  # fmt: skip
    except CeleryLeaderError as exc:
        print(f"celery-leader-arq: {exc}", file=sys.stderr)
        return 2
    try:
        worker.run()
    except CeleryLeaderError as exc:  # the election could not start (checked once against the backend)
        print(f"celery-leader-arq: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from celery_leader.integrations.arq import main as _main

    sys.exit(_main())
