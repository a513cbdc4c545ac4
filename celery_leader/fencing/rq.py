"""RQ jobs that know their fencing token, and optionally refuse a deposed leader's jobs.

The leader schedulers of :mod:`celery_leader.integrations.rq` put their term's token in
``job.meta`` (``celery_leader_token``, with the election in ``celery_leader_election``).
:func:`fenced_job` wraps a job function: it reads the token of the running job, passes it
as the ``fencing_token`` keyword when the function takes one, and with
``refuse_stale=True`` refuses to run a job whose token is below one a job of the same
election already ran with (the mark is kept in RQ's own Redis, at
``celery-leader:fence:<election>``, checked and raised by one Lua script)::

    from celery_leader.fencing.rq import fenced_job
    from celery_leader.fencing.redis import fenced_set

    @fenced_job(refuse_stale=True)
    def report(fencing_token=None):
        fenced_set(r, "report:status", fencing_token, "done")

A refused job fails with :class:`~celery_leader.errors.StaleTokenError` before its body
runs. A job enqueued by hand (no token) runs with ``fencing_token=None``; the fenced
helpers refuse ``None``, so it cannot write unfenced by accident. The same caveat as for
Celery applies: with ``refuse_stale``, a job the previous term enqueued legitimately but
that runs after the next term's first job is refused too.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from ..errors import StaleTokenError
from ..integrations.rq.config import META_ELECTION, sent_token
from . import redis as fenced_redis

__all__ = ["fenced_job", "job_token", "fence_key"]

log = logging.getLogger(__name__)


def fence_key(election: str) -> str:
    """The Redis key that keeps the highest token a job of ``election`` ran with."""
    return f"celery-leader:fence:{election}"


def job_token(job: Any = None) -> int | None:
    """The fencing token of ``job`` (default: the job running now); ``None`` if no leader enqueued it."""
    if job is None:
        from rq import get_current_job

        job = get_current_job()
    return None if job is None else sent_token(job)


def fenced_job(func: Callable | None = None, *, refuse_stale: bool = False, connection: Any = None) -> Any:
    """Decorator for an RQ job function: hands it its fencing token; optionally refuses stale jobs.

    ``connection``: the Redis for the refuse-stale mark (default: the job's own connection).
    """

    def wrap(fn: Callable) -> Callable:
        try:
            takes_token = "fencing_token" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_token = False

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from rq import get_current_job

            job = get_current_job()
            token = None if job is None else sent_token(job)
            if refuse_stale and token is not None and job is not None:
                election = str((job.meta or {}).get(META_ELECTION) or "rq")
                client = connection if connection is not None else job.connection
                try:
                    key = fence_key(election)
                    fenced_redis.observe(client, key, token, fence_key=key)
                except StaleTokenError as exc:
                    log.warning("job %s refused: token %s of election %r is below %s, already run",
                                job.id, token, election, exc.seen)
                    raise
            if takes_token:
                kwargs.setdefault("fencing_token", token)
            return fn(*args, **kwargs)

        return run

    return wrap(func) if func is not None else wrap
