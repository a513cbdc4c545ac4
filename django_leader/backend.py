"""``django://[DB_ALIAS]``: leases in a table of the project's own database (no new infrastructure).

One row of :class:`django_leader.models.Lease` per election. Compare-and-swap is one
conditional statement in autocommit mode, so no transaction is ever held across a lease:

* create-if-absent: ``INSERT`` of a unique ``name`` (an ``IntegrityError`` is :class:`Conflict`);
* update: ``UPDATE ... SET version = expected + 1 WHERE name = %s AND version = expected``
  (one affected row is success, none is :class:`Conflict`).

Versions are integers: a new row starts at the current time in microseconds and every write
adds one, so a row deleted and created again never reuses a version a stale candidate holds.

Fencing tokens survive a deleted row: :class:`~django_leader.models.LeaseFence` keeps the
highest token per name, raised in the same short transaction as each acquisition (renewals
and releases of the writer's own term stay one statement). Reads lift tokens to the fence
and report a deleted row as held by ``(lease row deleted)`` with the version
``absent:<fence>``: its holder may still be inside its lease, so candidates wait one lease
before the next term. The lock logic is shared with ``postgresql://``
(:mod:`celery_leader.backends.sql`).

On PostgreSQL, followers wait on ``LISTEN`` (one connection per backend) and a writer that
changes the holder sends ``NOTIFY`` after its write has landed, so a release is seen at
once; elsewhere followers poll every ``retry_period``.

The backend keeps its *own* small pool of connections (made from ``DATABASES[alias]``),
separate from Django's per-thread ones: the election thread never touches the request or
command connections, never leaves one open in a thread Django does not clean up, and can set
per-call timeouts on its own sessions: ``statement_timeout``/``lock_timeout`` on PostgreSQL,
``max_statement_time``/``innodb_lock_wait_timeout``/``lock_wait_timeout`` on MariaDB
(``max_execution_time`` on MySQL), ``busy_timeout`` on SQLite.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from celery_leader.backends.sql import Listener, SqlLock, Tables, Watchdog, channel_for
from celery_leader.lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict
from celery_leader.urls import UrlOptions, redact

__all__ = ["DjangoBackend", "DjangoLock", "DjangoPostgresLock", "ensure_django"]

log = logging.getLogger("celery_leader.django")

CAPABILITIES = Capabilities(linearizable=True, watch=False, partition_safe=True)
#: on PostgreSQL, LISTEN/NOTIFY wakes followers at once
PG_CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)
MAX_IDLE = 4
T = TypeVar("T")
#: bounds every call on the client side, and the LISTEN connection's pings
_WATCHDOG = Watchdog("celery-leader-django-watchdog")

# errors that mean "lost a race", whatever the driver calls them
_RACE_PGCODES = {"40001", "40P01"}  # serialization failure, deadlock
_RACE_MYSQL = {1213}  # deadlock found
_MISSING_TABLE_PGCODES = {"42P01"}
_MISSING_TABLE_MYSQL = {1146}


def ensure_django() -> None:
    """Make sure Django is importable, configured and its apps loaded (``django.setup()`` if needed).

    This lets ``celery-leader run --url django://`` work outside ``manage.py`` when
    ``DJANGO_SETTINGS_MODULE`` is set.
    """
    try:
        import django
        from django.apps import apps
        from django.conf import settings
    except ImportError as exc:
        raise ConfigurationError(
            f"the django:// backend needs Django ({exc}); run: pip install 'celery-leader[django]'"
        ) from exc
    try:
        configured = settings.configured
        if not configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ConfigurationError(
                "the django:// backend needs Django settings: use it inside a Django project "
                "(manage.py) or set DJANGO_SETTINGS_MODULE"
            )
        if not apps.ready:
            if apps.loading:
                raise ConfigurationError(
                    "the django:// backend was opened while Django was still loading apps "
                    "(from AppConfig.ready() or a models module); open it after start-up"
                )
            django.setup()
    except ImportError as exc:
        raise ConfigurationError(f"cannot import the Django settings module: {exc}") from exc
    if not apps.is_installed("django_leader"):
        raise ConfigurationError(
            "the django:// backend stores leases in django_leader's table: add 'django_leader' to "
            "INSTALLED_APPS and run: python manage.py migrate django_leader"
        )


def _is_memory_sqlite(settings_dict: dict[str, Any]) -> bool:
    name = str(settings_dict.get("NAME") or "")
    return name in ("", ":memory:") or ("mode=memory" in name and "cache=shared" not in name)


def _driver_code(exc: BaseException) -> tuple[str | None, int | None]:
    """(PostgreSQL SQLSTATE, MySQL errno) of a Django-wrapped driver error."""
    cause = exc.__cause__ or exc
    pgcode = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    errno = None
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):
        errno = args[0]
    return pgcode, errno


def _fileno(raw: Any) -> int | None:
    """The socket of a driver connection: psycopg 2/3 and mysqlclient have ``fileno()``,
    PyMySQL keeps it in ``_sock``; None for SQLite (a local file: ``busy_timeout`` bounds it)."""
    for get in (lambda: raw.fileno(), lambda: raw._sock.fileno()):
        try:
            fd = get()
        except Exception:  # noqa: BLE001 - not this driver's way
            continue
        if isinstance(fd, int) and fd >= 0:
            return fd
    return None


def _usable(wrapper: Any) -> bool:
    try:
        return bool(wrapper.connection is not None and wrapper.is_usable())
    except Exception:  # noqa: BLE001 - a wrapper that cannot even answer is not usable
        return False


class _Pool:
    """Idle connections of one alias, usable from any thread (one thread at a time each)."""

    def __init__(self, alias: str, settings_dict: dict[str, Any]) -> None:
        self.alias = alias
        self.settings_dict = settings_dict
        self.vendor = ""
        self._idle: list[Any] = []
        self._guard = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    def take(self, timeout: float) -> tuple[Any, bool]:
        """A connection wrapper, and whether it was reused (it may have died while idle)."""
        with self._guard:
            if self._closed:
                raise BackendUnavailable(f"the django://{self.alias} backend is closed")
            if self._pid != os.getpid():
                # forked: the idle sockets belong to the parent; forget them without closing
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop(), True
        from django.db.utils import load_backend

        params = copy.deepcopy(self.settings_dict)
        engine = params["ENGINE"]
        options = params.setdefault("OPTIONS", {})
        if "postgresql" in engine or "postgis" in engine:
            # bound the connect itself (libpq ignores values below 2 s)
            options.setdefault("connect_timeout", max(2, math.ceil(timeout)))
        elif "mysql" in engine:
            # connect_timeout covers only the TCP connect; the handshake reads are bounded by
            # read/write timeouts (mysqlclient and PyMySQL both take these, in whole seconds)
            bound = max(1, math.ceil(timeout))
            options.setdefault("connect_timeout", bound)
            options.setdefault("read_timeout", bound + 1)
            options.setdefault("write_timeout", bound + 1)
        wrapper = load_backend(engine).DatabaseWrapper(params, self.alias)
        wrapper.inc_thread_sharing()
        self.vendor = wrapper.vendor
        return wrapper, False

    def give(self, wrapper: Any, healthy: bool) -> None:
        with self._guard:
            if healthy and not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(wrapper)
                return
        self._discard(wrapper)

    @staticmethod
    def _discard(wrapper: Any) -> None:
        try:
            wrapper.close()
        except Exception as exc:  # noqa: BLE001 - a broken connection is being dropped anyway
            log.debug("closing a lease connection failed: %s", exc)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for wrapper in idle:
            self._discard(wrapper)


class DjangoLock(SqlLock):
    """The lease row ``name`` (see :mod:`celery_leader.backends.sql`). Thread-safe."""

    capabilities = CAPABILITIES

    def __init__(self, backend: DjangoBackend, name: str) -> None:
        super().__init__(backend, name)
        self._alias = backend.alias

    def recover_hint(self) -> str:
        return "delete that django_leader_lease row to recover: the fence stays"

    def describe(self) -> str:
        return f"django lease {self.name!r} in database {self._alias!r}"


class DjangoPostgresLock(DjangoLock):
    """On PostgreSQL, followers wait on ``LISTEN`` instead of polling (notified handover)."""

    capabilities = PG_CAPABILITIES


class DjangoBackend(Backend):
    """Leases in ``DATABASES[alias]`` through the ``django_leader`` app's table."""

    schemes = ("django",)
    capabilities = CAPABILITIES

    def __init__(self, alias: str = "default") -> None:
        ensure_django()
        from django.db import connections

        from .models import Lease, LeaseFence

        if alias not in connections.settings:
            known = ", ".join(sorted(connections.settings)) or "none"
            raise ConfigurationError(
                f"django://{alias}: no database alias {alias!r} in settings.DATABASES (known: {known}); "
                "write django://ALIAS with one of those, or django:// for 'default'"
            )
        settings_dict = connections.settings[alias]
        if "sqlite" in settings_dict.get("ENGINE", "") and _is_memory_sqlite(settings_dict):
            raise ConfigurationError(
                f"django://{alias}: an in-memory SQLite database is private to one connection, so candidates "
                "could not see each other's leases; use a database file (or a shared-cache memory URI in tests)"
            )
        self.alias = alias
        self._pool = _Pool(alias, settings_dict)
        self._table_name = Lease._meta.db_table
        self._fence_name = LeaseFence._meta.db_table
        self._tables: Tables | None = None
        #: LISTEN for instant handover on PostgreSQL (followers elsewhere poll)
        engine = str(settings_dict.get("ENGINE", ""))
        self._postgresql = "postgresql" in engine or "postgis" in engine
        self._listener: Listener | None = None
        if self._postgresql:
            self._listener = Listener(
                self._listen_connection, channel_for(self._table_name), watchdog=_WATCHDOG, label=f"django://{alias}"
            )

    @classmethod
    def from_url(cls, url: str) -> DjangoBackend:
        parts = urlsplit(url)
        if parts.scheme != "django":
            raise ConfigurationError(f"not a django:// URL: {redact(url)!r}")
        UrlOptions(parts.query, scheme="django", known=())  # refuses any option, naming it
        if parts.fragment or parts.username or parts.password or parts.port:
            raise ConfigurationError(
                f"django:// URLs take only a database alias (django://ALIAS, default 'default'), got {redact(url)!r}; "
                "put connection options in settings.DATABASES"
            )
        alias = (parts.hostname or parts.path.strip("/")) or "default"
        # urlsplit lower-cases hostname: keep the alias as written
        if parts.netloc:
            alias = parts.netloc
        return cls(alias)

    def lock(self, name: str) -> DjangoLock:
        return DjangoPostgresLock(self, name) if self._postgresql else DjangoLock(self, name)

    def _listen_connection(self) -> Any:
        """A driver connection (psycopg 3 or psycopg2, as Django uses) for LISTEN, in autocommit."""
        from django.db.utils import load_backend

        params = copy.deepcopy(self._pool.settings_dict)
        params.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
        wrapper = load_backend(params["ENGINE"]).DatabaseWrapper(params, self.alias)
        raw = wrapper.get_new_connection(wrapper.get_connection_params())
        raw.autocommit = True
        return raw

    # --- calls ---------------------------------------------------------------------------

    def _call(self, timeout: float, fn: Callable[[Any, Tables], T]) -> T:
        """Run ``fn(cursor, tables)`` on a pooled connection, bounded by ``timeout`` on the client.

        The connect is bounded by the driver's ``connect_timeout`` (at least 2 s for libpq,
        1 s for MySQL drivers); every statement after it by :data:`_WATCHDOG`, which shuts
        the connection's socket down at the deadline whatever the driver (psycopg 2 or 3,
        mysqlclient, PyMySQL): a hung server or a network that silently drops packets makes
        the call raise :class:`BackendUnavailable` at its deadline, and that connection is
        dropped, never reused.
        """
        from django.db import DatabaseError, IntegrityError, InterfaceError

        timeout = max(0.001, float(timeout))
        deadline = time.monotonic() + timeout
        while True:
            wrapper, reused = self._pool.take(timeout)
            healthy = False
            ticket: int | None = None
            try:
                with wrapper.wrap_database_errors:
                    wrapper.ensure_connection()
                fd = _fileno(wrapper.connection)
                if fd is not None:
                    ticket = _WATCHDOG.arm(fd, deadline)
                with wrapper.cursor() as cur:
                    self._set_timeout(wrapper, cur, max(0.001, deadline - time.monotonic()))
                    out = fn(cur, self._names(wrapper))
                healthy = True
                return out
            except Conflict:
                healthy = True
                raise
            except IntegrityError as exc:
                healthy = True
                raise Conflict(f"{self.alias}: the lease exists ({exc})") from exc
            except (DatabaseError, InterfaceError) as exc:
                # InterfaceError: PyMySQL's answer on a connection whose socket is gone (closing
                # the cursor after the watchdog shut it), outside Django's DatabaseError
                fired, ticket = ticket is not None and _WATCHDOG.disarm(ticket), None
                if fired:
                    raise BackendUnavailable(
                        f"django://{self.alias}: no answer within {timeout:.3g} s (the database, or the network to "
                        "it, hangs); that connection was dropped"
                    ) from None
                # An idle pooled connection the server dropped (restart, idle timeout, failover):
                # try once more on a fresh one. Safe for writes too: if the first attempt did
                # commit, the retry fails compare-and-swap and the engine re-reads its own record.
                if reused and time.monotonic() < deadline - 0.001 and not _usable(wrapper):
                    log.info("django://%s: a pooled connection was dead (%s); reconnecting", self.alias, exc)
                    continue
                raise self._translate(exc) from exc
            finally:
                if ticket is not None and _WATCHDOG.disarm(ticket):
                    healthy = False  # its socket was shut down: never reuse it
                self._pool.give(wrapper, healthy)

    def _names(self, wrapper: Any) -> Tables:
        if self._tables is None:
            quote = wrapper.ops.quote_name
            channel = channel_for(self._table_name) if wrapper.vendor == "postgresql" else None
            self._tables = Tables(quote(self._table_name), quote(self._fence_name), wrapper.vendor, channel)
        return self._tables

    @staticmethod
    def _set_timeout(wrapper: Any, cur: Any, timeout: float) -> None:
        """Bound server-side waits (lock waits, a long statement) of the next statement by ``timeout``."""
        ms = max(10, int(timeout * 1000) // 10 * 10)
        if getattr(wrapper, "_celery_leader_timeout", None) == ms:
            return
        vendor = wrapper.vendor
        if vendor == "postgresql":
            # one statement (psycopg 3 with server-side binding refuses several in one execute)
            cur.execute(
                f"SELECT set_config('statement_timeout', '{ms}', false), set_config('lock_timeout', '{ms}', false)"
            )
            cur.fetchone()
        elif vendor == "mysql":
            secs = max(1, math.ceil(ms / 1000))
            if wrapper.mysql_is_mariadb:
                cur.execute(
                    f"SET SESSION max_statement_time = {ms / 1000:.3f}, "
                    f"innodb_lock_wait_timeout = {secs}, lock_wait_timeout = {secs}"
                )
            else:
                cur.execute(
                    f"SET SESSION max_execution_time = {ms}, innodb_lock_wait_timeout = {secs}, "
                    f"lock_wait_timeout = {secs}"
                )
        elif vendor == "sqlite":
            cur.execute(f"PRAGMA busy_timeout = {ms}")
        wrapper._celery_leader_timeout = ms

    def _translate(self, exc: BaseException) -> Exception:
        pgcode, errno = _driver_code(exc)
        text = " ".join(str(exc).split())  # one line: drivers' messages span several
        if pgcode in _RACE_PGCODES or errno in _RACE_MYSQL:
            return Conflict(f"{self.alias}: lost a race ({text})")
        if pgcode in _MISSING_TABLE_PGCODES or errno in _MISSING_TABLE_MYSQL or "no such table" in text:
            return ConfigurationError(
                f"django://{self.alias}: the lease tables ({self._table_name}, {self._fence_name}) are missing; run: "
                f"python manage.py migrate django_leader --database {self.alias}"
            )
        return BackendUnavailable(f"django://{self.alias}: {type(exc).__name__}: {text}")

    # --- start-up and housekeeping -------------------------------------------------------

    def check(self, timeout: float = 5.0) -> None:
        """Reachable, and the ``django_leader`` migrations applied (else ConfigurationError naming the fix)."""

        def probe(cur: Any, t: Tables) -> None:
            for table in (t.lease, t.fence):
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE 1 = 0")
                cur.fetchone()

        self._call(timeout, probe)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()

    def describe(self) -> str:
        return f"django://{self.alias}"
