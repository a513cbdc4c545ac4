"""APScheduler 3.x: run jobs only on the leader.

Two pieces, usable together or apart:

* :func:`guard` / :class:`LeaderGuard`: the scheduler starts *paused*; it is resumed (and
  woken at once) when this process is elected and paused when leadership ends. Each
  round of job processing also checks :attr:`Election.is_leader` right before it looks
  for due jobs, so a scheduler never submits a job after the local lease deadline, even in
  the moment before the pause lands. ``BackgroundScheduler`` and ``BlockingScheduler``
  use the thread driver; ``AsyncIOScheduler`` uses the asyncio driver in its own loop.
* :class:`LeaderJobStore`: wraps any job store (memory, SQLAlchemy, Redis...) and hands
  out due jobs only while leading. Registered as ``leader`` in the
  ``apscheduler.jobstores`` entry-point group, so it can be named in configuration.

A plain script stopped with SIGTERM would never call ``shutdown()``, and a standby would
wait a full lease. So :func:`guard` installs SIGTERM/SIGINT handling (in the main thread,
only where no handler of your own is installed; ``handle_signals=False`` to opt out):
SIGTERM raises ``SystemExit(143)`` and SIGINT ``KeyboardInterrupt`` in the main thread, as
``runasleader`` does, and at interpreter exit the scheduler is shut down (waiting for its
running jobs) and the lock released, so a standby takes over at once.

APScheduler cannot interrupt a running job. A job that must know whether it may still
act calls :func:`is_leader` / :func:`current_token` (or checks the guard) and passes the
token on as a fencing token.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, EVENT_SCHEDULER_STARTED
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, BaseScheduler

from ..aio import AsyncElection
from ..election import Election
from ..lock import ConfigurationError
from ..record import printable

__all__ = ["guard", "LeaderGuard", "LeaderJobStore", "is_leader", "current_token"]

log = logging.getLogger(__name__)

_GUARDS: dict[str, Any] = {}
_GUARDS_LOCK = threading.Lock()


def _register(name: str, owner: Any) -> None:
    with _GUARDS_LOCK:
        _GUARDS[name] = owner


def _lookup(name: str | None) -> Any:
    with _GUARDS_LOCK:
        if name is not None:
            return _GUARDS.get(name)
        if len(_GUARDS) == 1:
            return next(iter(_GUARDS.values()))
    if not _GUARDS:
        return None
    raise ConfigurationError(f"several elections are active ({', '.join(sorted(_GUARDS))}): name the one you mean")


def is_leader(name: str | None = None) -> bool:
    """From inside a job: does this process still lead ``name`` (the only election if omitted)?"""
    owner = _lookup(name)
    return bool(owner is not None and owner.is_leader)


def current_token(name: str | None = None) -> int | None:
    """From inside a job: the fencing token of the current term, or ``None`` when not leading."""
    owner = _lookup(name)
    return owner.token if owner is not None else None


def _election_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {"url", "backend", "identity", "lease_duration", "renew_deadline", "retry_period", "release_on_cancel", "max_drift"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ConfigurationError(f"unknown election options {sorted(unknown)}; use {sorted(allowed)}")
    return kwargs


class LeaderGuard:
    """Makes ``scheduler`` process jobs only while this process leads ``name``."""

    def __init__(
        self,
        scheduler: BaseScheduler,
        *,
        name: str = "apscheduler",
        catch_up: bool = False,
        handle_signals: bool = True,
        **election: Any,
    ) -> None:
        self.scheduler = scheduler
        self.name = name
        self.catch_up = catch_up
        self._async = _is_asyncio(scheduler)
        options = _election_kwargs(election)
        callbacks: dict[str, Any] = dict(
            on_started_leading=self._elected, on_stopped_leading=self._deposed, on_new_leader=self._new_leader
        )
        self.election: Election | AsyncElection = (
            AsyncElection(name, **options, **callbacks) if self._async else Election(name, **options, **callbacks)
        )
        self._retry = self.election.timing.retry_period
        self._previous_handlers: dict[int, Any] = {}
        self._install()
        if handle_signals and not self._async:
            self._install_signals()
        _register(name, self)

    # --- what jobs may ask -------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    @property
    def token(self) -> int | None:
        return self.election.token

    # --- wiring ------------------------------------------------------------------------

    def _install(self) -> None:
        sched = self.scheduler
        original_process = sched._process_jobs

        @functools.wraps(original_process)
        def process_jobs() -> float | None:
            # fail closed: look for due jobs only while leadership is confirmed right now
            if not self.election.is_leader:
                return self._retry if sched.state == STATE_RUNNING else None
            if threading.current_thread() is not threading.main_thread():
                return original_process()
            with _exit_held_back():  # BlockingScheduler: APScheduler would swallow the SystemExit
                return original_process()

        sched._process_jobs = process_jobs
        sched.add_listener(self._on_shutdown, EVENT_SCHEDULER_SHUTDOWN)
        if sched.state == STATE_STOPPED:
            # start paused; the election starts with the scheduler (its loop exists by then)
            original_start = sched.start

            @functools.wraps(original_start)
            def start(*args: Any, paused: bool = False, **kwargs: Any) -> None:
                sched.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
                original_start(*args, paused=True, **kwargs)

            sched.start = start
        else:
            sched.pause()
            self._start_election()

    def _install_signals(self) -> None:
        """SIGTERM -> SystemExit(143), SIGINT -> KeyboardInterrupt; shut down cleanly at exit."""
        if threading.current_thread() is not threading.main_thread():
            log.debug("guard() outside the main thread: no signal handlers installed")
        else:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _terminate)
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        """At interpreter exit: shut the scheduler down (running jobs finish) and release."""
        if self.scheduler.state != STATE_STOPPED:
            log.info("exiting: shutting %s down and releasing %r", type(self.scheduler).__name__, self.name)
            try:
                self.scheduler.shutdown(wait=True)
            except Exception:  # noqa: BLE001 - exiting anyway; the release below still runs
                log.exception("scheduler shutdown failed")
        self.close(wait=True)

    def _on_started(self, event: Any) -> None:
        self.scheduler.remove_listener(self._on_started)
        self._start_election()

    def _start_election(self) -> None:
        election = self.election
        if isinstance(election, AsyncElection):
            asyncio.get_running_loop().create_task(election.start())
        else:
            election.start()
        log.info("APScheduler %s waits for leadership of %r", type(self.scheduler).__name__, self.name)

    def _elected(self, leadership: Any) -> None:
        if self.scheduler.state != STATE_STOPPED:
            log.info("elected for %r (token %d): resuming jobs", self.name, leadership.token)
            if not self.catch_up:
                self._skip_overdue()
            self.scheduler.resume()  # resume() wakes the scheduler at once

    def _new_leader(self, identity: str) -> None:
        if identity != self.election.identity:  # this process says "resuming jobs" when it leads
            log.info("%s leads %r: standing by", printable(identity), self.name)

    def _skip_overdue(self) -> None:
        """Move runs that fell due while standing by to their next time after now.

        A per-process schedule cannot tell whether the old leader ran that slot: running it
        again could run it twice. (``catch_up=True`` leaves misfire_grace_time and coalesce
        to decide; a shared job store behind :class:`LeaderJobStore` knows what ran.)
        """
        now = datetime.now(self.scheduler.timezone)
        for job in self.scheduler.get_jobs():
            if job.next_run_time is not None and job.next_run_time < now and not isinstance(
                self.scheduler._lookup_jobstore(job._jobstore_alias), LeaderJobStore
            ):
                upcoming = job.trigger.get_next_fire_time(job.next_run_time, now)
                while upcoming is not None and upcoming < now:
                    upcoming = job.trigger.get_next_fire_time(upcoming, now)
                if upcoming is None:
                    continue
                log.info("skipping the run of %s that fell due while standing by; next at %s", job.id, upcoming)
                job.modify(next_run_time=upcoming)

    def _deposed(self) -> None:
        if self.scheduler.state != STATE_STOPPED:
            log.info("lost leadership of %r: pausing jobs", self.name)
            self.scheduler.pause()

    def _on_shutdown(self, event: Any) -> None:
        self.close()

    def close(self, wait: bool = False) -> None:
        """Stop the election and release the lock (called on scheduler shutdown).

        ``wait``: release before returning (thread driver); otherwise in a non-daemon
        thread, so that the shutdown event handler returns at once.
        """
        with _GUARDS_LOCK:
            if _GUARDS.get(self.name) is self:
                del _GUARDS[self.name]
        for sig, previous in list(self._previous_handlers.items()):
            if signal.getsignal(sig) is _terminate and threading.current_thread() is threading.main_thread():
                signal.signal(sig, previous)
            self._previous_handlers.pop(sig, None)
        if isinstance(self.election, AsyncElection):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.create_task(self.election.stop())
            return
        if wait:
            self.election.stop()
            return
        threading.Thread(target=self.election.stop, name="celery-leader-apscheduler-stop", daemon=False).start()

    async def aclose(self) -> None:
        """Async variant for ``AsyncIOScheduler``: stop the election and wait for the release."""
        await self.election.stop()  # type: ignore[misc]


def _job_store_plugin(kind: str) -> Any:
    """The job store class registered as ``kind`` in ``apscheduler.jobstores`` (no scheduler needed)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="apscheduler.jobstores"):
        if ep.name == kind:
            return ep.load()
    raise ConfigurationError(
        f"no APScheduler job store is registered as {kind!r}: use memory, sqlalchemy, redis, mongodb, ... "
        "or pass a job store instance"
    )


class _Exit:
    """SIGTERM's ``SystemExit``, held back while the main thread processes jobs.

    APScheduler catches ``BaseException`` around submitting a job (and around calling
    listeners) and logs it: a ``SystemExit`` raised there by the SIGTERM handler was
    swallowed, and a ``BlockingScheduler`` went on running as if no SIGTERM had come (the
    lock was not released; the standby waited until the process was killed and the lease
    ran out). So while the main thread is in ``_process_jobs`` the handler only notes the
    exit, and the guard raises it as soon as that returns, outside APScheduler's handlers.
    Only the main thread runs signal handlers and touches this.
    """

    depth = 0
    pending: int | None = None


@contextlib.contextmanager
def _exit_held_back() -> Iterator[None]:
    _Exit.depth += 1
    try:
        yield
    finally:
        _Exit.depth -= 1
        if _Exit.depth == 0 and _Exit.pending is not None:
            code, _Exit.pending = _Exit.pending, None
            raise SystemExit(code)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM in the main thread: unwind it (``finally`` blocks run; exit status 143).

    Inside APScheduler's job processing it is raised when that returns (:class:`_Exit`).
    """
    if _Exit.depth:
        _Exit.pending = 128 + signum
        return
    raise SystemExit(128 + signum)


def _is_asyncio(scheduler: BaseScheduler) -> bool:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    return isinstance(scheduler, AsyncIOScheduler)


def guard(
    scheduler: BaseScheduler,
    *,
    url: str | None = None,
    name: str = "apscheduler",
    catch_up: bool = False,
    handle_signals: bool = True,
    **timing: Any,
) -> LeaderGuard:
    """Run ``scheduler``'s jobs only on the leader of ``name``. Call before or after ``start()``.

    ``catch_up=False`` (default): runs that fell due while this process stood by are
    skipped on takeover (never twice); ``True``: APScheduler's misfire rules decide.
    ``handle_signals=True`` (default; not for ``AsyncIOScheduler``): SIGTERM ends the main
    thread with ``SystemExit(143)`` where no handler of yours is installed, and at exit the
    scheduler is shut down and the lock released, so a standby takes over at once.
    """
    return LeaderGuard(scheduler, name=name, url=url, catch_up=catch_up, handle_signals=handle_signals, **timing)


class LeaderJobStore(BaseJobStore):
    """A job store that hands out due jobs only while this process leads.

    ``inner`` is a job store instance, or its plugin name with options
    (``{"type": "sqlalchemy", "url": "postgresql://..."}``). The other keyword arguments
    configure the election (``url``, ``name``, ``lease_duration``...). With a shared inner
    store (SQLAlchemy, Redis), standbys never touch the jobs, and a new leader picks up
    the shared ``next_run_time`` where the old one left it.
    """

    def __init__(self, inner: Any = None, *, name: str = "apscheduler-jobs", **election: Any) -> None:
        super().__init__()
        self._inner_spec = inner if inner is not None else {"type": "memory"}
        self.inner: BaseJobStore | None = inner if isinstance(inner, BaseJobStore) else None
        self.name = name
        self._options = _election_kwargs(election)
        self.election: Election | None = None

    def start(self, scheduler: BaseScheduler | None, alias: str) -> None:
        """Start the inner store and the election.

        ``scheduler`` may be ``None`` (as plain APScheduler stores allow, e.g. to use a store
        on its own): the store then works the same, only nobody is woken up on election.
        """
        super().start(scheduler, alias)  # type: ignore[arg-type]
        if self.inner is None:
            spec = dict(self._inner_spec) if isinstance(self._inner_spec, dict) else {"type": self._inner_spec}
            kind = spec.pop("type")
            if scheduler is not None:
                self.inner = scheduler._create_plugin_instance("jobstore", kind, spec)
            else:
                self.inner = _job_store_plugin(kind)(**spec)
        self.inner.start(scheduler, alias)  # type: ignore[arg-type]
        wake = (lambda lead: scheduler.wakeup()) if scheduler is not None else None
        self.election = Election(self.name, on_started_leading=wake, **self._options)
        self.election.start()
        _register(self.name, self.election)

    def shutdown(self) -> None:
        if self.election is not None:
            self.election.stop()
            with _GUARDS_LOCK:
                if _GUARDS.get(self.name) is self.election:
                    del _GUARDS[self.name]
        if self.inner is not None:
            self.inner.shutdown()

    @property
    def is_leader(self) -> bool:
        return self.election is not None and self.election.is_leader

    def get_due_jobs(self, now: datetime) -> list:
        if not self.is_leader:
            return []
        return self.inner.get_due_jobs(now)  # type: ignore[union-attr]

    def get_next_run_time(self) -> datetime | None:
        nxt = self.inner.get_next_run_time()  # type: ignore[union-attr]
        if nxt is None or self.is_leader or self.election is None:
            return nxt
        # a standby must not spin on overdue jobs it may not run: look again later
        later = datetime.now(nxt.tzinfo) + timedelta(seconds=self.election.timing.retry_period)
        return max(nxt, later)

    # plain delegation
    def lookup_job(self, job_id: str) -> Any:
        return self.inner.lookup_job(job_id)  # type: ignore[union-attr]

    def get_all_jobs(self) -> list:
        return self.inner.get_all_jobs()  # type: ignore[union-attr]

    def add_job(self, job: Any) -> None:
        self.inner.add_job(job)  # type: ignore[union-attr]

    def update_job(self, job: Any) -> None:
        self.inner.update_job(job)  # type: ignore[union-attr]

    def remove_job(self, job_id: str) -> None:
        self.inner.remove_job(job_id)  # type: ignore[union-attr]

    def remove_all_jobs(self) -> None:
        self.inner.remove_all_jobs()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<LeaderJobStore {self.name} over {self.inner!r}>"
