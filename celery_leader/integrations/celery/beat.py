"""Highly available Celery beat: ``celery beat -S leader`` wraps any base scheduler.

Many beats run; one leads and sends the periodic tasks, the others stand by and take over
when it dies or is stopped. The election runs in its own thread (see
:mod:`celery_leader.election`); ``tick()`` never renews anything, it only *reads* the
live, deadline-based leadership state.

Wrapping: :class:`LeaderScheduler` builds, once per base class, a subclass
``Leader<Base>(LeaderScheduler, Base)`` and instantiates that (dynamic subclassing).
Delegation was rejected because Celery and third-party code reach into the scheduler
object directly (RedBeat's ``beat_init`` receiver reads ``sender.scheduler.lock_key``,
DatabaseScheduler's property ``schedule`` calls ``self.sync()``): a subclass keeps every
method and attribute of the base and overrides only the choke points:

* ``tick``: a standby returns at most ``retry_period`` without touching the base; a new
  term first reloads the base's state from its store and applies the catch-up policy.
* ``apply_async``: every single entry is sent only if leadership is confirmed at that
  moment (and, for shared stores, only after its new ``last_run_at`` was written).
* ``sync``: a non-leader never writes schedule state (it could clobber the leader's).
* ``close``: persists, then stops the election, which releases the lock.

Fail closed: any error in the election or in the reload means "not leader".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.beat import PersistentScheduler, Scheduler
from celery.utils.imports import symbol_by_name

from ...core import Timing, validate_identity, validate_name
from ...election import Election, Leadership, default_identity
from ...lock import ConfigurationError, partition_warning
from ...record import printable
from ...registry import ENV_URL, default_url, open_backend
from ...urls import redact, scrub

__all__ = ["LeaderScheduler", "LeaderConfig", "leader_config", "current_leadership", "sent_token", "CATCH_UP_POLICIES", "HEADER_TOKEN"]

log = logging.getLogger(__name__)

#: message headers added to every task beat sends (the task can check its fencing token)
HEADER_TOKEN = "celery_leader_token"
HEADER_IDENTITY = "celery_leader_identity"
HEADER_ELECTION = "celery_leader_election"
HEADER_SENT_AT = "celery_leader_sent_at"

CATCH_UP_POLICIES = ("once", "skip")

DEFAULT_BASE = "celery.beat:PersistentScheduler"
#: short names accepted by ``leader_election_scheduler``
BASE_ALIASES = {
    "persistent": "celery.beat:PersistentScheduler",
    "memory": "celery.beat:Scheduler",
    "django": "django_celery_beat.schedulers:DatabaseScheduler",
    "django_celery_beat.schedulers.DatabaseScheduler": "django_celery_beat.schedulers:DatabaseScheduler",
    "redbeat": "redbeat.schedulers:RedBeatScheduler",
    "redbeat.RedBeatScheduler": "redbeat.schedulers:RedBeatScheduler",
}

_sending = threading.local()


def _conf(app: Any, key: str, default: Any = None) -> Any:
    value = app.conf.get(key)
    return default if value is None else value


def _seconds(app: Any, key: str, default: float) -> float:
    value = _conf(app, key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a number of seconds, got {value!r}") from None


def default_name(app: Any, suffix: str = "beat") -> str:
    """``<app main name>.beat``, reduced to the characters every backend accepts."""
    main = re.sub(r"[^A-Za-z0-9._-]+", "-", str(getattr(app, "main", None) or "celery")).strip("._-") or "celery"
    return f"{main}.{suffix}"


@dataclass(frozen=True)
class LeaderConfig:
    """The ``leader_election_*`` settings of a Celery app, validated (see :func:`leader_config`)."""

    url: str
    #: no URL was configured: the embedded file:// default (logged at start-up)
    url_from_default: bool
    name: str
    identity: str
    timing: Timing
    catch_up: str | None


def leader_config(app: Any, *, suffix: str = "beat") -> LeaderConfig:
    """Read and validate the ``leader_election_*`` keys (no I/O). Errors name the key to fix."""
    url = _conf(app, "leader_election_url", "") or ""
    if not isinstance(url, str):
        raise ConfigurationError(
            f"leader_election_url must be a lock URL string such as 'redis://host:6379/0', got {type(url).__name__}"
        )
    url = url.strip() or os.environ.get(ENV_URL, "").strip()
    from_default = not url
    url = url or default_url()
    name = _conf(app, "leader_election_name") or default_name(app)
    if suffix != "beat":
        name = f"{name}.{suffix}"
    try:
        validate_name(name)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (set leader_election_name)") from None
    identity = _conf(app, "leader_election_identity") or default_identity()
    try:
        validate_identity(identity)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (set leader_election_identity)") from None
    try:
        timing = Timing(
            _seconds(app, "leader_election_lease_duration", 15.0),
            _seconds(app, "leader_election_renew_deadline", 10.0),
            _seconds(app, "leader_election_retry_period", 2.0),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc} (leader_election_lease_duration / leader_election_renew_deadline / "
            "leader_election_retry_period)"
        ) from None
    catch_up = _conf(app, "leader_election_catch_up")
    if catch_up is not None and catch_up not in CATCH_UP_POLICIES:
        raise ConfigurationError(
            f"leader_election_catch_up must be one of {', '.join(CATCH_UP_POLICIES)} (or unset), got {catch_up!r}"
        )
    return LeaderConfig(
        url=url, url_from_default=from_default, name=name, identity=identity, timing=timing, catch_up=catch_up
    )


def _check_url(url: str) -> str:
    """Parse the URL now (``from_url`` only, no lock taken) so that a typo stops beat at start-up."""
    try:
        backend = open_backend(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"leader_election_url {redact(url)} is not usable: {scrub(exc, url)}") from None
    try:
        unsafe = partition_warning(backend)
        if unsafe:
            log.warning("celery-leader: %s", unsafe)
        return backend.describe()
    finally:
        with contextlib.suppress(Exception):
            backend.close()


class _NoTraceback(logging.Filter):
    """Celery logs what ends ``beat`` with its traceback: ours is a configuration message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConfigurationError):
            record.exc_info = None
            record.exc_text = None
        return True


def _one_line_startup_errors() -> None:
    """Make a :class:`ConfigurationError` that ends ``celery beat`` print as one line, not
    at the bottom of Celery's traceback. Other exceptions keep their traceback."""
    if getattr(sys.excepthook, "_celery_leader", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, ConfigurationError):
            print(f"celery-leader: configuration error: {' '.join(str(exc).split())}", file=sys.stderr)
        else:
            previous(kind, exc, tb)

    hook._celery_leader = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    logging.getLogger("celery.beat").addFilter(_NoTraceback())


def resolve_base(app: Any, explicit: Any = None) -> type[Scheduler]:
    """The base scheduler class from ``leader_election_scheduler`` (class, path or alias)."""
    spec = explicit if explicit is not None else _conf(app, "leader_election_scheduler", DEFAULT_BASE)
    if isinstance(spec, str):
        spec = BASE_ALIASES.get(spec, spec)
        try:
            spec = symbol_by_name(spec)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(
                f"leader_election_scheduler {spec!r} cannot be imported ({exc}); use a class path like "
                "'django_celery_beat.schedulers:DatabaseScheduler' or one of: " + ", ".join(sorted(BASE_ALIASES)[:3])
            ) from None
    if not (isinstance(spec, type) and issubclass(spec, Scheduler)):
        raise ConfigurationError(f"leader_election_scheduler must be a celery.beat.Scheduler subclass, got {spec!r}")
    if issubclass(spec, LeaderScheduler):
        raise ConfigurationError("leader_election_scheduler cannot itself be LeaderScheduler; name the base scheduler")
    return spec


def is_per_host(base: type[Scheduler]) -> bool:
    """True when the base keeps its state on this host only (shelve file or memory)."""
    return base is Scheduler or issubclass(base, PersistentScheduler)


def _wrapped_base(cls: type) -> type:
    """For ``class Mine(LeaderScheduler, Base)``: the first scheduler class after the leader part."""
    for klass in cls.__mro__:
        if issubclass(klass, Scheduler) and not issubclass(klass, LeaderScheduler):
            return klass
    return Scheduler


_COMBINED: dict[type, type] = {}
_COMBINED_LOCK = threading.Lock()


def _combined(base: type[Scheduler]) -> type[LeaderScheduler]:
    with _COMBINED_LOCK:
        cls = _COMBINED.get(base)
        if cls is None:
            cls = type(f"Leader{base.__name__}", (LeaderScheduler, base), {"_leader_base": base, "__module__": __name__})
            _COMBINED[base] = cls
        return cls  # type: ignore[return-value]


def sent_token(request: Any) -> int | None:
    """In a task: the fencing token of the beat term that sent it (``None``: not sent by a leader beat).

    ``sent_token(self.request)`` in a bound task; compare it with the highest token your
    side effect has seen to reject a message from a deposed leader.
    """
    for source in (getattr(request, "get", None), getattr(getattr(request, "headers", None) or {}, "get", None)):
        if source is not None:
            value = source(HEADER_TOKEN)
            if value is not None:
                from ...fencing import token_from_message

                return token_from_message(value, f"header {HEADER_TOKEN!r}")
    return None


def current_leadership() -> Leadership | None:
    """The leadership under which beat is sending right now (inside ``apply_async``)."""
    return getattr(_sending, "leadership", None)


@signals.before_task_publish.connect(weak=False)
def _add_headers(sender: Any = None, headers: dict | None = None, **_: Any) -> None:
    """Stamp the fencing token on what beat sends, so that tasks can reject stale senders."""
    lead = getattr(_sending, "leadership", None)
    if lead is None or headers is None:
        return
    headers[HEADER_TOKEN] = lead.token
    headers[HEADER_IDENTITY] = lead.identity
    headers[HEADER_ELECTION] = lead.name
    headers[HEADER_SENT_AT] = time.time()


@signals.beat_embedded_init.connect(weak=False)
def _embedded(sender: Any = None, **_: Any) -> None:
    """Embedded beat (``worker -B``): never raise into the worker; release on SIGTERM."""
    scheduler = getattr(sender, "__dict__", {}).get("scheduler")
    if isinstance(scheduler, LeaderScheduler):
        scheduler._leader_embedded = True
    # the beat child process of a prefork worker dies on SIGTERM without running its
    # shutdown path; turn SIGTERM into SystemExit so that the lock is released
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class LeaderScheduler(Scheduler):
    """A beat scheduler that sends only while this beat is the elected leader.

    ``celery beat -S leader`` or ``beat_scheduler = "celery_leader.beat:LeaderScheduler"``;
    the wrapped scheduler comes from ``leader_election_scheduler``.
    """

    _leader_base: type[Scheduler] | None = None
    _leader_election: Election | None = None
    _leader_embedded = False

    def __new__(cls, *args: Any, **kwargs: Any) -> LeaderScheduler:
        if cls._leader_base is None and cls is LeaderScheduler:
            app = kwargs.get("app", args[0] if args else None)
            if app is None:
                raise ConfigurationError("LeaderScheduler needs the Celery app (app=...)")
            try:
                cls = _combined(resolve_base(app))
            except ConfigurationError:
                _one_line_startup_errors()
                raise
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        app = kwargs.get("app", args[0] if args else None)
        # configuration first, without I/O: a typo stops beat before anything is sent
        try:
            self._leader_conf = leader_config(app)
            self._leader_backend_desc = _check_url(self._leader_conf.url)
        except ConfigurationError:
            _one_line_startup_errors()
            raise
        base = self._leader_base or _wrapped_base(type(self))
        self._leader_per_host = is_per_host(base)
        catch_up = self._leader_conf.catch_up
        self._leader_catch_up = catch_up or ("skip" if self._leader_per_host else "once")
        self._leader_mutex = threading.RLock()
        self._leader_term: int | None = None  # token of the term whose state is loaded
        self._leader_state: str | None = None
        self._leader_state_key: str | None = None
        self._leader_closed = False
        self._leader_election = None
        super().__init__(*args, **kwargs)
        self._leader_colock: Any = None
        redbeat_key = getattr(self, "lock_key", None)
        if redbeat_key and any(c.__name__ == "RedBeatScheduler" for c in type(self).__mro__):
            # RedBeat: its own lock (renewed inside tick(), 25 minutes by default) is replaced by
            # the election; the leader still holds its key, so that plain RedBeat beats stay out
            # during a rolling upgrade (celery_leader.integrations.celery.redbeat)
            self._leader_colock = self._redbeat_colock(redbeat_key)
            self.lock_key = None

    def _redbeat_colock(self, key: str) -> Any:
        from redbeat.schedulers import get_redis

        from .redbeat import RedBeatCoLock

        timing: Timing = self._leader_conf.timing
        ttl = max(3 * float(self.max_interval or 1.0), 2 * timing.lease_duration)
        return RedBeatCoLock(get_redis(self.app), key, self._leader_conf.name, ttl)

    # --- the election ------------------------------------------------------------------

    @property
    def election(self) -> Election | None:
        return self._leader_election

    def _ensure_election(self) -> Election | None:
        """Start the election on the first tick (never in ``__init__``)."""
        if self._leader_election is not None or self._leader_closed:
            return self._leader_election
        conf = self._leader_conf
        timing: Timing = conf.timing
        if conf.url_from_default:
            log.warning(
                "celery-leader: no leader_election_url (nor %s); using %s, which only beats on this host share. "
                "Set leader_election_url for beats on several hosts.",
                ENV_URL,
                conf.url,
            )
        election = Election(
            conf.name,
            url=conf.url,
            identity=conf.identity,
            timing=timing,
            on_new_leader=self._leader_new_leader,
        )
        try:
            election.start()  # checks the backend once: a configuration it rejects raises here
        except BaseException:
            election.stop()  # not started: this only closes its connections
            raise
        self._leader_election = election
        log.info(
            "celery-leader: beat %s standing for %s on %s", conf.identity, conf.name, self._leader_backend_desc
        )
        return self._leader_election

    def _leader_new_leader(self, identity: str) -> None:
        if identity != self._leader_conf.identity:
            log.info("celery-leader: %s is now leading %s", identity, self._leader_conf.name)

    def _leadership(self) -> Leadership | None:
        """The valid leadership whose schedule state is loaded, else None (fail closed)."""
        election = self._leader_election
        if election is None or self._leader_closed:
            return None
        try:
            lead = election.leadership
        except Exception:  # noqa: BLE001 - an error in the election means "not leader"
            log.exception("celery-leader: reading the election state failed; not sending")
            return None
        if lead is None or lead.token != self._leader_term or not lead.is_valid():
            return None
        return lead

    def _note_state(self, state: str, detail: str = "", level: int | None = None) -> None:
        """One log line per change of state (or of the leader a standby sees).

        INFO for the ordinary states (a standby at start-up is normal), WARNING when a
        term ended (leading -> standby) or when ``level`` says so.
        """
        key = state + detail
        if key == self._leader_state_key:
            return
        previous, self._leader_state, self._leader_state_key = self._leader_state, state, key
        if level is None:
            level = logging.WARNING if previous == "leading" and state != "leading" else logging.INFO
        log.log(level, "celery-leader: beat is %s%s", state, detail)

    # --- scheduler overrides -------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        standby_wait = min(self._leader_conf.timing.retry_period, self.max_interval or 1.0)
        try:
            election = self._ensure_election()
        except ConfigurationError as exc:
            if not self._leader_embedded:
                _one_line_startup_errors()
                raise  # standalone beat: exit with the message; it never runs unguarded
            log.error("celery-leader: cannot start the election (%s); this embedded beat stays on standby", exc)
            self._leader_closed = True  # a configuration does not fix itself
            return standby_wait
        except Exception:  # noqa: BLE001 - anything else may pass: try again next tick
            self._note_state("standby", " (the election could not start; retrying)", logging.WARNING)
            log.debug("celery-leader: starting the election failed", exc_info=True)
            return standby_wait
        if election is None:
            return standby_wait
        lead = election.leadership
        if lead is not None and self._leader_colock is not None and not self._leader_colock.hold(lead.token):
            self._note_state("waiting", " for RedBeat's own lock (held by a beat without celery-leader)", logging.WARNING)
            return standby_wait
        if lead is None:
            if self._leader_colock is not None:
                self._leader_colock.release()
            holder = election.leader
            if holder or self._leader_state is not None:  # at start-up, wait until the first read tells
                self._note_state("standby", f" (leader: {printable(holder)})" if holder else " (no leader)")
            return standby_wait
        if lead.token != self._leader_term:
            try:
                self._begin_term(lead)
            except Exception:  # noqa: BLE001 - an unreadable store means we cannot lead safely yet
                log.exception("celery-leader: could not reload the schedule on takeover; not sending yet")
                return standby_wait
            self._note_state("leading", f" (token {lead.token})")
        elif self._leader_state != "leading":
            self._note_state("leading", f" (token {lead.token})")
        return super().tick(*args, **kwargs)

    def _begin_term(self, lead: Leadership) -> None:
        """Reload the base's state from its store, then apply the catch-up policy."""
        with self._leader_mutex:
            self.reload_schedule()
            if self._leader_catch_up == "skip":
                skipped = self._leader_skip_overdue()
                if skipped:
                    log.info("celery-leader: catch-up 'skip': not running %s", ", ".join(sorted(skipped)))
            if not self._leader_per_host:
                # write-ahead: the store must hold the advanced state before anything is sent
                self._leader_term = lead.token
                self.sync()
            self._leader_term = lead.token
            self._heap = None

    def reload_schedule(self) -> None:
        """Forget in-memory run state and read it again from the store (called on each new term).

        Handles django-celery-beat and RedBeat. A scheduler of your own that caches its
        store in memory: subclass ``class Mine(LeaderScheduler, MyScheduler)`` and extend
        this method to re-read it.
        """
        dirty = getattr(self, "_dirty", None)
        if isinstance(dirty, set):
            dirty.clear()  # stale writes of an earlier term must never reach the store
        if hasattr(self, "_initial_read"):  # django-celery-beat DatabaseScheduler
            changes = getattr(self, "Changes", None)
            if changes is not None:
                # changes made before this read are in it: do not reload again right away
                self._last_timestamp = changes.last_change()
            self._initial_read = True
            self._schedule = None
            # a reload seen while on standby must not rebuild the heap from entries whose
            # last_run_at attribute predates this term's first send
            self._heap_invalidated = False
        self._heap = None
        self.old_schedulers = None
        _ = self.schedule  # RedBeat and the database read the store here

    def _leader_skip_overdue(self) -> list[str]:
        """Mark as just run: every entry (per-host store) or the overdue ones (shared store)."""
        skipped = []
        for entry in list(self.schedule.values()):
            try:
                due = self._leader_per_host or bool(entry.is_due()[0])
            except Exception:  # noqa: BLE001
                continue
            if due:
                self.reserve(entry)
                skipped.append(entry.name)
        return skipped

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        name = getattr(entry, "name", "?")
        if self._leadership() is None:
            log.warning("celery-leader: not sending %s: this beat is not the leader (fail closed)", name)
            return None
        if advance:
            entry = self.reserve(entry)
        if not self._leader_persist(entry):
            log.error("celery-leader: not sending %s: its new last run could not be stored (fail closed)", name)
            return None
        lead = self._leadership()  # again, right before the message goes out
        if lead is None:
            log.warning("celery-leader: not sending %s: leadership ended (fail closed)", name)
            return None
        _sending.leadership = lead
        try:
            return super().apply_async(entry, producer=producer, advance=False, **kwargs)
        finally:
            _sending.leadership = None

    def _leader_persist(self, entry: Any) -> bool:
        """Write-ahead for shared stores: store the entry's new ``last_run_at`` before sending.

        So a new leader that reloads the store never sends this run again (at most once).
        """
        if self._leader_per_host:
            return True
        dirty = getattr(self, "_dirty", None)
        save = getattr(entry, "save", None)
        try:
            if isinstance(dirty, set) and callable(save):
                # django-celery-beat: save this very entry (the heap's object; the schedule
                # dict may hold another copy after a reload), not whatever sync() finds
                save()
                dirty.discard(entry.name)
                model = getattr(entry, "model", None)
                if model is not None and getattr(model, "last_run_at", None) is not None:
                    # the schedule dict keeps this object: its own last_run_at must not
                    # lag the model's, or a heap rebuild would find it due again
                    entry.last_run_at = model.last_run_at
            else:
                self.sync()  # RedBeat stored it in reserve(); others persist here
        except Exception:  # noqa: BLE001
            log.exception("celery-leader: storing the last run of %s failed", getattr(entry, "name", "?"))
            return False
        return True

    def sync(self) -> None:
        if not self._leader_per_host and self._leader_term is not None and self._leadership() is None:
            return  # a former leader's state is stale: never write it to the shared store
        super().sync()

    def close(self) -> None:
        """Persist (if leading), then stop the election: that releases the lock at once."""
        election = self._leader_election
        try:
            super().close()
        finally:
            already, self._leader_closed = self._leader_closed, True
            if election is not None and not already:
                log.info("celery-leader: beat stopping; releasing %s", self._leader_conf.name)
                try:
                    election.stop()
                except Exception:  # noqa: BLE001
                    log.exception("celery-leader: stopping the election failed; the lease will expire")
            if self._leader_colock is not None:
                self._leader_colock.release()

    @property
    def info(self) -> str:
        conf = self._leader_conf
        timing: Timing = conf.timing
        base = self._leader_base or _wrapped_base(type(self))
        lines = [
            f"    . leader election -> {conf.name} on {self._leader_backend_desc}",
            f"    . identity -> {conf.identity}",
            f"    . lease -> {timing.lease_duration}s (renew deadline {timing.renew_deadline}s, "
            f"retry {timing.retry_period}s), catch-up: {self._leader_catch_up}",
            f"    . wraps -> {base.__module__}.{base.__qualname__}",
        ]
        try:
            base_info = super().info
        except Exception:  # noqa: BLE001
            base_info = ""
        if base_info:
            lines.append(base_info.rstrip())
        return "\n".join(lines)
