"""One election as an RQ scheduler sees it: start late, check live, load state per term.

Every RQ integration follows the same rules as Celery beat's leader scheduler:

* the election runs in its own thread (:class:`celery_leader.Election`); the scheduler
  loop only *reads* the live, deadline-based leadership, so a long enqueue cycle can
  never let the lease lapse unnoticed;
* it is started by the scheduler's run loop, never in ``__init__`` (RQ forks the
  worker's scheduler process; django-rq builds schedulers in views);
* :meth:`TermGuard.confirmed` is asked right before each enqueue, and only returns a
  term whose shared state has been reloaded (``TermGuard.loaded_term``);
* stopping releases the lock, so a graceful stop hands over at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from ...election import Election, Leadership
from ...lock import Backend
from .config import LeaderConfig, open_lock_backend

__all__ = ["TermGuard", "start_guard", "stop_guard"]

log = logging.getLogger(__name__)


class TermGuard:
    """An election for ``name`` plus the term whose state the scheduler has loaded."""

    def __init__(
        self, name: str, config: LeaderConfig, backend: Backend, *, wake: threading.Event | None = None, what: str = "scheduler"
    ) -> None:
        self.name = name
        self.what = what
        self.wake = wake
        timing = config.timing
        self.election = Election(
            name,
            backend=backend,
            identity=config.identity,
            timing=timing,
            on_started_leading=self._elected,
            on_new_leader=self._new_leader,
        )
        self.loaded_term: int | None = None
        self._state: str | None = None

    def start(self) -> None:
        self.election.start()

    def stop(self) -> None:
        """Stop electing; a held lock is released (bounded by the renew deadline)."""
        with contextlib.suppress(Exception):
            self.election.stop()

    def _elected(self, leadership: Leadership) -> None:
        if self.wake is not None:
            self.wake.set()  # the scheduler loop starts the term now, not after its sleep

    def _new_leader(self, identity: str) -> None:
        if identity != self.election.identity:
            log.info("celery-leader: %s is now leading %s", identity, self.name)

    def current(self) -> Leadership | None:
        """The valid leadership right now, whether or not its state is loaded (fail closed)."""
        try:
            lead = self.election.leadership
        except Exception:  # noqa: BLE001 - an error in the election means "not leader"
            log.exception("celery-leader: reading the election state of %s failed; not enqueuing", self.name)
            return None
        if lead is None or not lead.is_valid():
            self.note("standby", self.election.leader)
            return None
        return lead

    def confirmed(self) -> Leadership | None:
        """A valid leadership whose state was loaded for this very term, else None."""
        lead = self.current()
        if lead is None or lead.token != self.loaded_term:
            return None
        return lead

    def note(self, state: str, detail: Any = None) -> None:
        """Log state changes once (not once per loop)."""
        if state == self._state:
            return
        self._state = state
        if state == "leading":
            log.info("celery-leader: %s is leading %s (token %s)", self.what, self.name, detail)
        else:
            holder = f"leader: {detail}" if detail else "no leader seen yet"
            log.info("celery-leader: %s is standing by for %s (%s)", self.what, self.name, holder)


def start_guard(
    name: str, config: LeaderConfig, connection: Any, *, wake: threading.Event, what: str
) -> tuple[TermGuard, Backend]:
    """Open the lock backend (on RQ's ``connection`` if it is the lock's) and stand for ``name``.

    If starting fails, the election is stopped and the backend closed before the error goes on.
    """
    backend = open_lock_backend(config, connection)
    guard = TermGuard(name, config, backend, wake=wake, what=what)
    try:
        guard.start()
    except BaseException:
        guard.stop()
        backend.close()
        raise
    return guard, backend


def stop_guard(guard: TermGuard | None, backend: Backend | None, logger: logging.Logger, what: str) -> None:
    """Stop the election (releasing a held lock), then close its backend; either may be None."""
    if guard is not None:
        logger.info("celery-leader: %s stopping; releasing %s", what, guard.name)
        guard.stop()
    if backend is not None:
        with contextlib.suppress(Exception):
            backend.close()
