"""Run code only while this process leads: the engine behind ``runasleader`` and ``leader_only``.

How a running command is interrupted when leadership is lost (renewals failed for
``RENEW_DEADLINE``, or another candidate took the lease):

1. the main thread gets ``SIGUSR1``; its handler raises :class:`LeadershipLost` (a
   ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` in the command does
   not swallow it; a blocking ``sleep``/socket call is interrupted too). If the code runs in
   another thread, the exception is set asynchronously in that thread instead (it fires at
   the next Python instruction, not inside a blocking call).
2. if the code is still running at the lease deadline (``LEASE_DURATION`` after the last
   successful renewal was sent, minus the drift margin) the process exits at once with
   status 3 (``os._exit``): nobody else can lead before that moment, so the work has stopped
   before another instance starts it.

``runasleader`` then exits with status 3; a command that returns normally exits 0 and the
lease is released so that a standby takes over at once. SIGTERM (when nothing else handles
it) raises ``SystemExit(143)`` in the command, which also releases the lease on the way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from celery_leader.election import Election, Leadership
from celery_leader.errors import BackendUnavailable, NotLeader
from celery_leader.lock import ConfigurationError, LockError
from celery_leader.once import Slot, mark_done

from .conf import leader_settings

__all__ = [
    "EXIT_LOST",
    "EXIT_NOT_ELECTED",
    "LeadershipLost",
    "NotLeader",
    "active_elections",
    "current_leadership",
    "election",
    "leader_only",
    "run_as_leader",
]

log = logging.getLogger("celery_leader.django")

T = TypeVar("T")

#: exit status of ``runasleader`` when leadership was lost while the command ran
EXIT_LOST = 3
#: exit status of ``runasleader --wait-timeout`` when it was not elected in time
EXIT_NOT_ELECTED = 4
INTERRUPT_SIGNAL = signal.SIGUSR1

_ACTIVE: weakref.WeakSet[Election] = weakref.WeakSet()
_current = threading.local()


class LeadershipLost(BaseException):
    """Raised inside leader-only code when this process stopped being the leader."""

    def __init__(self, message: str = "leadership lost") -> None:
        super().__init__(message)


def active_elections() -> list[Election]:
    """Elections started in this process through django_leader (for the status view)."""
    return list(_ACTIVE)


def current_leadership() -> Leadership | None:
    """The leadership under which the current leader-only code runs (its ``token`` is the fencing token)."""
    return getattr(_current, "leadership", None)


def election(name: str | None = None, **overrides: Any) -> Election:
    """An :class:`~celery_leader.Election` configured from ``settings.LEADER_ELECTION`` (not started).

    ``overrides`` are passed to ``Election`` (e.g. ``identity=``, ``on_started_leading=``).
    Start it yourself, where a leader is wanted: never in ``AppConfig.ready()``.
    """
    conf = leader_settings()
    conf.timing()
    kwargs = conf.election_kwargs()
    kwargs.update(overrides)
    made = Election(name or conf.name, **kwargs)
    _ACTIVE.add(made)
    return made


def _probe_before_skip(elected: Election) -> str | None:
    """Skip mode, before the election starts: raise :class:`NotLeader` (skipped) if another
    instance is active; return ``None`` if the lease is free, or the stale holder's identity
    if it has expired.

    "Active" means its record *changed* while we watched (a renewal, a release right after
    running the job, a takeover): a record that merely exists may belong to a dead process.
    A record unchanged for its lease duration has expired (judged by our own clock, from
    when we first saw it).
    """
    timing = elected.timing
    assert elected.backend is not None
    probe = elected.backend.lock(elected.name)
    first: str | None = None
    first_at = 0.0
    unreachable_until = time.monotonic() + timing.lease_duration + 2 * timing.op_timeout
    try:
        while True:
            try:
                seen = probe.get(timing.op_timeout)
            except LockError as exc:
                if time.monotonic() > unreachable_until:
                    raise NotLeader(f"could not read the lease of {elected.name!r}: {exc}") from exc
                time.sleep(timing.retry_period / 2)
                continue
            now = time.monotonic()
            if seen is None or (not seen.record.decode_error and seen.record.holder in ("", elected.identity)):
                return None  # free: try to take it
            if first is None:
                first, first_at = seen.version, now
            elif seen.version != first:
                who = seen.record.holder or "another instance"
                raise NotLeader(f"{who} is active on {elected.name!r}", holder=seen.record.holder or None, skipped=True)
            lease = seen.record.lease_duration if seen.record.lease_duration > 0 else timing.lease_duration
            if now - first_at > lease:
                log.warning(
                    "%s: the lease of %s has not been renewed for %.1f s; taking over",
                    elected.name,
                    seen.record.holder or "an unknown holder",
                    now - first_at,
                )
                return seen.record.holder or None
            time.sleep(timing.retry_period / 2)
    finally:
        probe.close()


def _wait_for_term(
    elected: Election, timeout: float | None, skip: bool, stale: str | None = None, slot: Slot | None = None
) -> None:
    """Block until leading; in skip mode give up (skipped) as soon as another live holder is seen;
    with a slot, give up (skipped) once the slot is done or over."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        if elected.wait_until_leader(0.05):
            return
        if time.monotonic() - asked < 0.04:
            time.sleep(0.05)  # the election has ended: do not spin
        holder = elected.leader
        if skip and holder not in (None, elected.identity, stale):
            raise NotLeader(f"{holder} leads {elected.name!r}", holder=holder, skipped=True)
        if slot is not None and slot.done_in(elected.record):
            raise NotLeader(f"slot {slot} is already done", holder=holder, skipped=True)
        if deadline is not None and time.monotonic() > deadline:
            if slot is not None:
                raise NotLeader(f"slot {slot} ended while {holder or 'another instance'} led", holder=holder, skipped=True)
            raise NotLeader(f"not elected leader of {elected.name!r} within {timeout} s", holder=holder)


def _async_raise(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(LeadershipLost))


@contextlib.contextmanager
def _interrupt_on_loss(lead: Leadership, hard_stop: bool) -> Iterator[None]:
    """While the block runs, turn ``lead.lost`` into :class:`LeadershipLost` in this thread."""
    worker = threading.current_thread()
    in_main = worker is threading.main_thread()
    state = {"armed": True, "fired": False}
    arming = threading.Lock()
    done = threading.Event()
    previous: Any = None

    def handler(signum: int, frame: Any) -> None:
        if state["armed"] and not state["fired"]:
            state["fired"] = True
            raise LeadershipLost(f"lost leadership of {lead.name!r} (token {lead.token})")

    if in_main:
        previous = signal.signal(INTERRUPT_SIGNAL, handler)

    def watch() -> None:
        while not lead.lost.wait(0.1):
            if done.is_set():
                return
        with arming:
            if done.is_set() or not state["armed"]:
                return
            log.error("%s: leadership lost (token %d); interrupting the leader-only code", lead.name, lead.token)
            if in_main:
                signal.pthread_kill(worker.ident, INTERRUPT_SIGNAL)  # type: ignore[arg-type]
            elif worker.ident is not None:
                state["fired"] = True
                _async_raise(worker.ident)
        if hard_stop and not done.wait(max(0.0, lead.deadline - time.monotonic())):
            log.critical("%s: leader-only code still running at the lease deadline; exiting now", lead.name)
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback(all_threads=True)  # where it was stuck, for the operator
            os._exit(EXIT_LOST)

    watcher = threading.Thread(target=watch, name=f"leader-interrupt-{lead.name}", daemon=True)
    watcher.start()
    _current.leadership = lead
    try:
        yield
    finally:
        with arming:
            state["armed"] = False
            done.set()
        _current.leadership = None
        # a disarmed handler stays installed rather than SIG_DFL, which would kill the process
        # if a late signal arrived; a user's own handler is put back
        if in_main and callable(previous):
            signal.signal(INTERRUPT_SIGNAL, previous)
    if state["fired"] or lead.lost.is_set():
        raise LeadershipLost(f"lost leadership of {lead.name!r} (token {lead.token}) while the code ran")


def run_as_leader(
    fn: Callable[[], T],
    *,
    name: str,
    skip: bool = False,
    wait_timeout: float | None = None,
    identity: str | None = None,
    hard_stop: bool = True,
    hold: float = 0.0,
    slot: Slot | None = None,
) -> T:
    """Call ``fn`` once this process leads election ``name``; renew while it runs; release after.

    ``skip``: raise :class:`NotLeader` (``skipped=True``) when another instance leads.
    ``wait_timeout``: raise :class:`NotLeader` if not elected in time (default: wait forever).
    ``hold``: keep the lease (renewing) until ``hold`` seconds after ``fn`` started, so that
    instances started a little later (cron on hosts with skewed clocks) skip a fast job.
    ``slot`` (:class:`~celery_leader.once.Slot`): once per slot across hosts: skip (raise
    :class:`NotLeader` with ``skipped=True``) when the slot is already marked done, wait while
    the slot lasts otherwise, and mark it done after ``fn`` returns, before the release.
    Raises :class:`LeadershipLost` if leadership ends before ``fn`` returns.
    """
    outer = current_leadership()
    if outer is not None and outer.name == name and outer.is_valid():
        # already leading this election in this thread (runasleader running a leader_only command)
        return fn()
    overrides: dict[str, Any] = {}
    if identity:
        overrides["identity"] = identity
    elected = election(name, **overrides)
    if elected.backend is not None:
        _check_backend(elected)
    previous_term: Any = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM (a deploy, systemd, Kubernetes) unwinds the command and releases the lease, so that
        # a standby takes over at once instead of after a lease; exit status 143 as for the default
        previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        if slot is not None:
            seen = _read_quietly(elected)
            if seen is not None and slot.done_in(seen.record):
                raise NotLeader(f"slot {slot} is already done", skipped=True)
            stale, timeout = None, wait_timeout if wait_timeout is not None else slot.seconds_left()
        elif skip:
            stale = _probe_before_skip(elected)
            # an expired holder is seen afresh by the election: it waits one more lease
            timeout = (2 if stale else 1) * elected.timing.lease_duration + 4 * elected.timing.op_timeout
        else:
            stale, timeout = None, wait_timeout
        elected.start()
        try:
            _wait_for_term(elected, timeout, skip, stale, slot)
        except NotLeader as exc:
            if skip and not exc.skipped:
                raise NotLeader(f"could not acquire the free lease of {name!r} (is the backend reachable?)") from exc
            raise
        lead = elected.leadership
        # wait_until_leader() can return a moment before the driver has built the Leadership
        settle = time.monotonic() + 1.0
        while lead is None and elected.is_leader and time.monotonic() < settle:
            time.sleep(0.005)
            lead = elected.leadership
        if lead is None:
            raise LeadershipLost(f"lost leadership of {name!r} before the code started")
        if slot is not None and slot.done_in(lead.record):
            raise NotLeader(f"slot {slot} is already done", skipped=True)
        log.info("%s: leading as %s with token %d", name, elected.identity, lead.token)
        started = time.monotonic()
        with _interrupt_on_loss(lead, hard_stop):
            result = fn()
        if slot is not None:
            mark_done(lead, slot)
        if hold > 0 and lead.is_valid():
            log.info("%s: holding the lease for %.1f s more", name, hold - (time.monotonic() - started))
            lead.lost.wait(max(0.0, hold - (time.monotonic() - started)))
        return result
    finally:
        elected.stop()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _check_backend(elected: Election) -> None:
    """The backend's start-up check: a :class:`ConfigurationError` at once; a backend that
    does not answer is asked again for a lease (plus two calls), as the skip probe does,
    then its error is raised. A database on a loaded host may answer one call late; a cron
    job is then not skipped for it, and one that is down still fails within that bound."""
    assert elected.backend is not None
    timing = elected.timing
    until = time.monotonic() + timing.lease_duration + 2 * timing.op_timeout
    told = False
    while True:
        try:
            elected.backend.check(timing.op_timeout)
            return
        except BackendUnavailable as exc:
            if time.monotonic() > until:
                raise
            if not told:
                log.warning("%s: the lock backend did not answer (%s); asking again for %.1f s",
                            elected.name, exc, until - time.monotonic())  # fmt: skip
                told = True
        time.sleep(timing.retry_period / 2)


def _read_quietly(elected: Election) -> Any:
    try:
        return elected.lock.get(elected.timing.op_timeout)
    except LockError:
        return None  # the election retries and tells


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def command_name(command: Any) -> str:
    """``myapp.management.commands.send_reports`` -> ``send_reports``."""
    return type(command).__module__.rsplit(".", 1)[-1]


def leader_only(
    name: str | Callable[..., Any] | None = None,
    *,
    skip: bool = False,
    wait_timeout: float | None = None,
    once_per: str | None = None,
) -> Any:
    """Decorate ``BaseCommand.handle`` so that the command runs only on the leader.

    The election is ``name`` (default ``<LEADER_ELECTION['NAME']>.<command name>``). By default
    it waits to be elected; ``skip=True`` returns at once (printing why) when another
    instance leads. ``once_per="1h"`` (for cron on every host): at most once per slot across
    all hosts, as ``runasleader --once-per``. Losing leadership raises ``CommandError`` with
    ``returncode`` 3.
    """
    slot_period = once_per
    if slot_period is not None:
        Slot.every(slot_period)  # a bad period fails at import time, not in cron at 3 am
    from django.core.management.base import CommandError

    def decorate(handle: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handle)
        def wrapper(self: Any, *args: Any, **options: Any) -> Any:
            election_name = name if isinstance(name, str) else f"{leader_settings().name}.{command_name(self)}"
            try:
                return run_as_leader(
                    lambda: handle(self, *args, **options),
                    name=election_name,
                    skip=skip,
                    wait_timeout=wait_timeout,
                    slot=Slot.every(slot_period) if slot_period is not None else None,
                )
            except NotLeader as exc:
                if exc.skipped:
                    self.stderr.write(f"skipped: {exc}")
                    return None
                raise CommandError(str(exc), returncode=EXIT_NOT_ELECTED) from exc
            except LeadershipLost as exc:
                raise CommandError(str(exc), returncode=EXIT_LOST) from None
            except ConfigurationError as exc:
                raise CommandError(str(exc)) from exc

        return wrapper

    if callable(name):  # used as @leader_only without arguments
        handle, name = name, None
        return decorate(handle)
    return decorate
