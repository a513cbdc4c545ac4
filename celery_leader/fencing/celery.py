"""Celery tasks that know their fencing token, and optionally refuse a deposed leader's messages.

The leader beat (``celery beat -S leader``) puts its term's token in every message it
sends (header ``celery_leader_token``, with the election's name in
``celery_leader_election``). :class:`FencedTask` reads them::

    from celery_leader.fencing.celery import FencedTask
    from celery_leader.fencing.redis import fenced_set

    @app.task(bind=True, base=FencedTask)
    def report(self):
        fenced_set(r, "report:status", self.fencing_token, "done")

``self.fencing_token`` is ``None`` for a message that no leader beat sent (``delay()`` from
a shell); the fenced helpers refuse ``None`` with a clear error, so such a call cannot
write unfenced by accident.

``refuse_stale = True`` (a task option: ``@app.task(base=FencedTask, refuse_stale=True)``)
also refuses to *run* a message whose token is lower than one a message of the same
election already ran with: a beat frozen past its lease that resumes and sends its
pending tick is stopped at the worker. The highest token run so far is kept in Redis
(decided: not the result backend, which may be disabled, RPC or a database without an
atomic compare; one Lua script here checks and raises the mark in one step), at key
``celery-leader:fence:<election>``, on ``leader_fence_url`` from the Celery
configuration, else the broker when it is Redis. A refused message fails with
:class:`~celery_leader.errors.StaleTokenError` before the task body runs (never retried by
``autoretry_for``, which wraps the body). Opt in knowingly: a message the previous term
sent legitimately but that is delivered after the next term's first message is refused
too; if that work must still happen, leave ``refuse_stale`` off and fence the side effects.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task

from ..errors import ConfigurationError, InvalidTokenError, StaleTokenError
from ..integrations.celery.beat import HEADER_ELECTION, HEADER_TOKEN, sent_token
from ..urls import redact
from . import redis as fenced_redis

__all__ = ["FencedTask", "fence_key", "CONF_FENCE_URL", "HEADER_TOKEN"]

log = logging.getLogger(__name__)

#: Celery setting naming the Redis that keeps the highest token run per election
CONF_FENCE_URL = "leader_fence_url"

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def fence_key(election: str) -> str:
    """The Redis key that keeps the highest token a task of ``election`` ran with."""
    return f"celery-leader:fence:{election}"


def _client(url: str) -> Any:
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        return client


class FencedTask(Task):
    """A task base class: ``self.fencing_token`` and, with ``refuse_stale = True``, stale messages refused."""

    abstract = True
    #: refuse a message whose token is below one already run for its election
    refuse_stale: bool = False
    #: Redis URL for the refuse-stale mark (default: ``leader_fence_url``, then a Redis broker)
    fence_url: str | None = None

    @property
    def fencing_token(self) -> int | None:
        """The token of the beat term that sent this message (``None``: not sent by a leader beat)."""
        return sent_token(self.request)

    @property
    def fencing_election(self) -> str | None:
        """The election name the sending beat led (``None``: not sent by a leader beat)."""
        request = self.request
        value = request.get(HEADER_ELECTION) if hasattr(request, "get") else None
        if value is None:
            value = (getattr(request, "headers", None) or {}).get(HEADER_ELECTION)
        return None if value is None else str(value)

    def _fence_url(self) -> str:
        url = self.fence_url or self.app.conf.get(CONF_FENCE_URL)
        if not url:
            broker = self.app.conf.broker_url or ""
            if not isinstance(broker, str) or ";" in broker:
                # a failover list names no single Redis: the mark must live in exactly one
                raise ConfigurationError(
                    f"task {self.name}: refuse_stale needs one Redis for the highest token run and the broker is "
                    f"a list of URLs; set app.conf.{CONF_FENCE_URL} = 'redis://...'"
                )
            if broker.split(":", 1)[0] in ("redis", "rediss", "unix"):
                url = broker
        if not url:
            raise ConfigurationError(
                f"task {self.name}: refuse_stale needs a Redis for the highest token run; "
                f"set app.conf.{CONF_FENCE_URL} = 'redis://...' (the broker is not Redis)"
            )
        return url

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = self.fencing_token
        if self.refuse_stale and token is not None:
            election = self.fencing_election or "celery-beat"
            url = self._fence_url()
            try:
                key = fence_key(election)
                fenced_redis.observe(_client(url), key, token, fence_key=key)
            except StaleTokenError as exc:
                log.warning("task %s[%s] refused: token %s of election %r is below %s, already run",
                            self.name, self.request.id, token, election, exc.seen)
                raise
            except InvalidTokenError:
                raise
            except Exception as exc:
                # fail closed: without the mark, a stale message cannot be told apart
                log.error("task %s: cannot check its fencing token on %s (%s); not running it",
                          self.name, redact(url), type(exc).__name__)
                raise
        return super().__call__(*args, **kwargs)
