"""Singleton queues: queues a Celery worker consumes only while it is their elected leader.

``celery_leader.worker.install(app)`` adds a consumer bootstep and the worker option
``--leader-queues q1,q2`` (or the ``leader_election_worker_queues`` setting). Each leader
queue has its own election, named ``<leader_election_name>.queue.<queue>``, so that two
workers configured with overlapping sets still never consume one queue together.

Threads: elections run in their own threads and never touch the consumer. The consumer's
own event loop reconciles every 0.1 s (and at once when an election changes): it consumes
a leader queue while ``election.is_leader`` is true (live, deadline-based) and cancels it
otherwise. A graceful release (worker shutdown) waits until the queue is cancelled, so
the next worker starts consuming only after this one stopped. Messages already delivered
(running, or prefetched) are finished by this worker: see docs/celery.md (acks_late).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from typing import Any

from celery import bootsteps

from ...election import Election, Leadership
from ...errors import ConfigurationError
from ...record import printable
from .beat import leader_config

__all__ = ["LeaderQueues", "install", "parse_queues"]

log = logging.getLogger(__name__)

RECONCILE_EVERY = 0.1


def parse_queues(value: Any) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (order kept, duplicates dropped).

    Anything else (a number, a dict) is a :class:`ConfigurationError` naming the setting.
    """
    if not value:
        return []
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        raise ConfigurationError(
            "leader_election_worker_queues (or --leader-queues) must be queue names: 'a,b' or ['a', 'b'], "
            f"got {type(value).__name__}"
        )
    out: list[str] = []
    for item in items:
        name = item.strip()
        if name and name not in out:
            out.append(name)
    return out


_SAFE_QUEUE = re.compile(r"[A-Za-z0-9._-]*[A-Za-z0-9]")


def _election_suffix(queue: str) -> str:
    """The election name part of a queue, distinct for distinct queue names (injective).

    A name of letters, digits, ``.``, ``_`` and ``-`` ending in a letter or digit is used as
    it is (``queue.<name>``, the names earlier versions gave it). Any other name is spelt
    out byte by byte under ``queuex.``: letters and digits as they are, every other byte as
    ``_XX`` (hex), so ``a b``, ``a/b`` and ``a-b`` get three different elections.
    """
    if _SAFE_QUEUE.fullmatch(queue):
        return "queue." + queue
    spelt = "".join(chr(b) if chr(b).isalnum() and b < 128 else f"_{b:02X}" for b in queue.encode("utf-8"))
    return "queuex." + spelt


class LeaderQueues(bootsteps.StartStopStep):
    """Consumer bootstep: consume the leader queues only while elected."""

    label = "LeaderQueues"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, leader_queues: Any = None, **kwargs: Any) -> None:
        self.queues = parse_queues(leader_queues) or parse_queues(c.app.conf.get("leader_election_worker_queues"))
        self.elections: dict[str, Election] = {}
        self.consumer: Any = None
        self._stopped: dict[str, threading.Event] = {}
        self._timer: Any = None
        self._shutting_down = False
        self.enabled = bool(self.queues)
        if not self.enabled:
            return
        self.conf = {q: leader_config(c.app, suffix=_election_suffix(q)) for q in self.queues}
        queues = c.app.amqp.queues
        for q in self.queues:
            if q not in queues:
                queues.select_add(q)
            # declared, but not consumed until elected
            queues.deselect(q)
        log.info("celery-leader: singleton queues %s (consumed only while leader)", ", ".join(self.queues))

    def start(self, c: Any) -> None:
        self.consumer = c
        if not self.elections:
            for q in self.queues:
                conf = self.conf[q]
                timing = conf.timing
                self._stopped[q] = threading.Event()
                self._stopped[q].set()
                election = Election(
                    conf.name,
                    url=conf.url,
                    identity=conf.identity,
                    timing=timing,
                    on_started_leading=lambda lead, q=q: self._lead(q, lead),
                    on_new_leader=functools.partial(self._new_leader, q),
                )
                self.elections[q] = election
                try:
                    election.start()  # registered first: its callbacks look it up
                except BaseException:
                    del self.elections[q]
                    raise
        if c.hub is not None:
            self._timer = c.hub.call_repeatedly(RECONCILE_EVERY, self.reconcile)
        elif getattr(c, "timer", None) is not None:
            self._timer = c.timer.call_repeatedly(RECONCILE_EVERY, lambda: c.call_soon(self.reconcile))
        self.reconcile()

    def reconcile(self) -> None:
        """In the consumer's thread: consume exactly the queues this worker leads now."""
        c = self.consumer
        tc = getattr(c, "task_consumer", None) if c is not None else None
        if tc is None:
            return
        for q, election in self.elections.items():
            try:
                want = election.is_leader and not self._shutting_down
                have = tc.consuming_from(q)
                if want and not have:
                    log.info("celery-leader: leading %s (token %s): consuming", q, election.token)
                    self._stopped[q].clear()
                    c.add_task_queue(q)
                elif not want and have:
                    log.warning("celery-leader: no longer leading %s: cancelling its consumer", q)
                    c.cancel_task_queue(q)
                if not want:
                    self._stopped[q].set()
            except Exception:  # noqa: BLE001 - never take the worker down
                log.exception("celery-leader: could not reconcile queue %s", q)

    def _new_leader(self, q: str, identity: str) -> None:
        """Another worker leads ``q`` (this one says "consuming" when it leads)."""
        if identity != self.elections[q].identity:
            log.info("celery-leader: %s leads %s: standing by", printable(identity), q)

    def _lead(self, q: str, lead: Leadership) -> None:
        """The term's work: at its end, wait until the event loop stopped consuming (bounded)."""
        lead.lost.wait()
        # the event loop's reconcile (every RECONCILE_EVERY s) cancels the consumer;
        # the release (graceful end) happens only after the consumer was cancelled
        self._stopped[q].wait(max(0.0, lead.deadline - time.monotonic()))

    def stop(self, c: Any) -> None:
        # a connection restart rebuilds the task consumer from the selected queues: make
        # sure it does not start consuming a leader queue before the next reconcile
        for q in self.queues:
            c.app.amqp.queues.deselect(q)
        if self._timer is not None:
            try:
                self._timer.cancel()
            except Exception:  # noqa: BLE001
                pass
            self._timer = None

    def shutdown(self, c: Any) -> None:
        """Worker shutdown: stop consuming, then release every lock so another worker takes over now."""
        self._shutting_down = True
        self.stop(c)
        tc = getattr(c, "task_consumer", None)
        for q in self.elections:
            try:
                if tc is not None and tc.consuming_from(q):
                    c.cancel_task_queue(q)
            except Exception:  # noqa: BLE001
                log.debug("cancelling %s at shutdown failed", q, exc_info=True)
            self._stopped[q].set()
        for q, election in self.elections.items():
            try:
                election.stop()
            except Exception:  # noqa: BLE001
                log.exception("celery-leader: releasing queue %s failed; its lease will expire", q)


def install(app: Any) -> None:
    """Add the bootstep and the ``--leader-queues`` worker option to ``app``."""
    import click

    if LeaderQueues in app.steps["consumer"]:
        return
    app.steps["consumer"].add(LeaderQueues)
    app.user_options["worker"].add(
        click.Option(
            ["--leader-queues"],
            default=None,
            help="Comma-separated queues this worker consumes only while it is their elected leader.",
        )
    )


def check(app: Any) -> None:
    """Validate the worker settings now (raises ``ConfigurationError`` naming the key)."""
    for q in parse_queues(app.conf.get("leader_election_worker_queues")):
        leader_config(app, suffix=_election_suffix(q))

