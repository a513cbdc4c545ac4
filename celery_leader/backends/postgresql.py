"""``postgresql://user@host:port/db?table=NAME``: leases in PostgreSQL, without Django.

The same two tables and the same compare-and-swap as ``django://`` (the shared SQL core,
:mod:`celery_leader.backends.sql`): one lease row per election updated with
``UPDATE ... WHERE name = %s AND version = %s``, created with ``INSERT ... ON CONFLICT DO
NOTHING``, and a fence table whose token survives a deleted row. The tables
(``celery_leader_lease`` and ``celery_leader_lease_fence`` unless ``?table=`` names
others) are created on first use; a role without ``CREATE`` gets a
:class:`ConfigurationError` naming the ``GRANT`` (or the DDL in docs/postgresql.md).

Followers wait on ``LISTEN`` (one connection per backend); a writer that changes the holder
sends ``NOTIFY`` after its write has landed (best effort: a failed ``NOTIFY`` is logged,
never raised). Renewals stay one statement; many elections' renewals go in one statement
together (:meth:`PostgresBackend.update_many`, ``capabilities.batch``).

Every call is bounded on the client side, whatever the network does: the connect runs under
``connect_timeout`` in a helper thread the caller stops waiting for at its deadline; a query
runs under a :class:`~celery_leader.backends.sql.Watchdog` that shuts the socket down at the
deadline (then the connection is dropped); ``statement_timeout``/``lock_timeout`` bound the
server's side; TCP keepalives and ``tcp_user_timeout`` notice dead peers of idle
connections. The password comes from the URL, ``PGPASSWORD`` or a passfile (libpq's rules)
and is never printed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlsplit

try:
    import psycopg
    from psycopg.conninfo import make_conninfo
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - registry turns this into the pip hint
    raise ImportError(exc.msg, name="psycopg") from exc

from ..errors import RegressionError
from ..lock import Backend, BackendUnavailable, BatchItem, Capabilities, ConfigurationError, Conflict, RenewBatch
from ..urls import UrlOptions, redact, scrub
from ._batch import send_alone, sort_items
from .sql import VANISHED_HOLDER, Listener, SqlLock, Tables, Watchdog, channel_for, renew_many_sql

__all__ = ["PostgresBackend", "PostgresLock", "DEFAULT_TABLE", "VANISHED_HOLDER", "ddl"]

log = logging.getLogger(__name__)

#: one primary: a write acknowledged is seen by every later read; a partition can only make
#: it unreachable. (A read replica or asynchronous failover is not: point the URL at the primary.)
#: Renewals batch: :meth:`PostgresBackend.update_many` sends them as one statement.
CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True, batch=True)

DEFAULT_TABLE = "celery_leader_lease"
MAX_IDLE = 4

#: query options passed on to libpq (anything else is a typo: refused)
LIBPQ_OPTIONS = (
    "application_name",
    "connect_timeout",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "options",
    "passfile",
    "port",
    "service",
    "sslcert",
    "sslcrl",
    "sslkey",
    "sslmode",
    "sslpassword",
    "sslrootcert",
    "target_session_attrs",
    "tcp_user_timeout",
)
#: libpq settings that bound every connection unless the URL says otherwise
DEFAULTS = {
    "application_name": "celery-leader",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_RACE_STATES = {"40001", "40P01"}  # serialization failure, deadlock
T = TypeVar("T")

_WATCHDOG = Watchdog("celery-leader-postgresql-watchdog")


def ddl(table: str = DEFAULT_TABLE) -> str:
    """The ``CREATE TABLE`` statements for ``table`` (what an owner runs for a role without CREATE)."""
    lease, fence = _quoted(table), _quoted(table + "_fence")
    return (
        f"CREATE TABLE IF NOT EXISTS {lease} (\n"
        "    name text PRIMARY KEY,\n"
        "    record text NOT NULL,\n"
        "    version bigint NOT NULL,\n"
        "    holder text NOT NULL DEFAULT '',\n"
        "    token bigint NOT NULL DEFAULT 0\n"
        ");\n"
        f"CREATE TABLE IF NOT EXISTS {fence} (\n"
        "    name text PRIMARY KEY,\n"
        "    token bigint NOT NULL\n"
        ");\n"
    )


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


def _check_table(table: str) -> str:
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENT.fullmatch(p) for p in parts) or len(parts[-1]) > 57:
        raise ConfigurationError(
            f"postgresql:// option ?table= must be NAME or SCHEMA.NAME (letters, digits, _; the name at most "
            f"57 characters, so that NAME_fence fits), got {table[:80]!r}"
        )
    return table


class PostgresLock(SqlLock):
    """One election's lease row. Thread-safe; shares its backend's connections."""

    capabilities = CAPABILITIES

    def __init__(self, backend: PostgresBackend, name: str) -> None:
        if not name:
            raise ConfigurationError("the election name must not be empty")
        super().__init__(backend, name)
        self._pg = backend

    def renew_batch(self) -> PostgresBackend:
        return self._pg

    def recover_hint(self) -> str:
        return f"delete that row: DELETE FROM {_quoted(self._pg.table)} WHERE name = '{self.name}'; the fence stays"

    def describe(self) -> str:
        return f"postgresql lease {self.name!r} in {self._pg.table} at {self._pg.describe()}"


class _Pool:
    """Idle connections, usable from any thread (one call at a time each); fork-aware."""

    def __init__(self, connect: Callable[[float], Any]) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._guard = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    def take(self, deadline: float) -> tuple[Any, bool]:
        with self._guard:
            if self._closed:
                raise BackendUnavailable("the postgresql backend is closed")
            if self._pid != os.getpid():
                # forked: the idle sockets belong to the parent; forget them without closing
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
        return self._connect(deadline), False

    def give(self, conn: Any, healthy: bool) -> None:
        with self._guard:
            if healthy and not self._closed and len(self._idle) < MAX_IDLE and self._pid == os.getpid():
                self._idle.append(conn)
                return
        _close(conn)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # noqa: BLE001 - a broken connection is being dropped anyway
        log.debug("closing a postgresql connection failed: %s", exc)


class PostgresBackend(Backend, RenewBatch):
    """Leases in one PostgreSQL database, shared by every election opened on it.

    Its locks renew in batches (:meth:`update_many`: one statement for many rows).
    """

    schemes = ("postgresql", "postgres")
    capabilities = CAPABILITIES

    def __init__(self, url: str, conninfo: dict[str, str], table: str = DEFAULT_TABLE) -> None:
        self.url = url
        self.table = _check_table(table)
        self._conninfo = {**DEFAULTS, **conninfo}
        self._tables = Tables(_quoted(table), _quoted(table + "_fence"), "postgresql", channel_for(table))
        self._pool = _Pool(self._connect)
        self._ready = False
        self._ready_guard = threading.Lock()
        self._listener: Listener | None = Listener(
            self._listen_connection, self._tables.channel or "", watchdog=_WATCHDOG, label="postgresql"
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        if not isinstance(url, str):
            raise ConfigurationError(f"a postgresql:// URL must be text, got {redact(url)}")
        parts = urlsplit(url)
        if parts.scheme not in cls.schemes:
            raise ConfigurationError(f"not a postgresql:// URL: {redact(url)}")
        if parts.fragment:
            raise ConfigurationError(f"postgresql:// URLs take no #fragment: {redact(url)}")
        options = UrlOptions(parts.query, scheme="postgresql", known=("table", *LIBPQ_OPTIONS))
        table = options.text("table", DEFAULT_TABLE) or DEFAULT_TABLE
        connect_timeout = options.seconds("connect_timeout", None, minimum=1, maximum=300)
        conninfo = dict(options.rest())
        if connect_timeout is not None:  # read above, so not in rest(): libpq takes whole seconds
            conninfo["connect_timeout"] = str(math.ceil(connect_timeout))
        try:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            if userinfo:
                user, sep, password = userinfo.partition(":")
                if user:
                    conninfo["user"] = unquote(user)
                if sep:
                    conninfo["password"] = unquote(password)
            if hostport:
                host, port = _host_port(hostport)
                if host:
                    conninfo.setdefault("host", host)
                if port:
                    conninfo.setdefault("port", port)
            dbname = unquote(parts.path.lstrip("/"))
            if dbname:
                conninfo["dbname"] = dbname
        except ValueError:
            raise ConfigurationError(
                f"cannot read {redact(url)}: write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?table=NAME] "
                "(percent-encode special characters)"
            ) from None
        if not conninfo.get("dbname"):
            raise ConfigurationError(
                f"{redact(url)} names no database: write postgresql://USER@HOST[:PORT]/DATABASE"
            )
        return cls(url, conninfo, table)

    def lock(self, name: str) -> PostgresLock:
        return PostgresLock(self, name)

    # --- connections -----------------------------------------------------------------------

    def _connect(self, deadline: float) -> Any:
        """A new autocommit connection, or BackendUnavailable at ``deadline`` whatever libpq does.

        libpq's own ``connect_timeout`` is at least 2 s, and a server that accepts TCP but
        never answers the start-up holds the connect that long: the connect runs in a helper
        thread, and a connection that arrives after its caller left is closed.
        """
        box: dict[str, Any] = {}
        done = threading.Event()
        guard = threading.Lock()

        def run() -> None:
            try:
                conn = psycopg.connect(make_conninfo(**self._conninfo), autocommit=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            else:
                with guard:
                    if box.get("abandoned"):
                        _close(conn)
                        return
                    box["conn"] = conn
            finally:
                done.set()

        threading.Thread(target=run, name="celery-leader-postgresql-connect", daemon=True).start()
        done.wait(max(0.0, deadline - time.monotonic()))
        with guard:
            if "conn" in box:
                return box["conn"]
            if "error" not in box:
                box["abandoned"] = True
                raise BackendUnavailable(f"{self.describe()}: no connection within the call's timeout")
        raise self._translate(box["error"], connecting=True) from None

    def _listen_connection(self) -> Any:
        return self._connect(time.monotonic() + max(2.0, float(self._conninfo.get("connect_timeout", 5))))

    # --- calls -----------------------------------------------------------------------------

    def _call(self, timeout: float, fn: Callable[[Any, Tables], T]) -> T:
        timeout = max(0.001, float(timeout))
        deadline = time.monotonic() + timeout
        self._ensure_tables(deadline)
        return self._run(deadline, fn)

    def _run(self, deadline: float, fn: Callable[[Any, Tables], T]) -> T:
        while True:
            conn, reused = self._pool.take(deadline)
            healthy = False
            fired = False
            ticket = _WATCHDOG.arm(conn.fileno(), deadline)
            try:
                try:
                    self._set_timeouts(conn, deadline - time.monotonic())
                    with conn.cursor() as cur:
                        out = fn(cur, self._tables)
                finally:
                    fired = _WATCHDOG.disarm(ticket)
                healthy = not fired
                return out
            except psycopg.Error as exc:
                if fired:
                    raise BackendUnavailable(f"{self.describe()}: no answer within the call's timeout") from None
                # An idle pooled connection the server dropped (restart, pg_terminate_backend,
                # failover): try once more on a fresh one. Safe for writes too: if the first
                # attempt did commit, the retry fails compare-and-swap and the engine re-reads.
                if reused and conn.broken and time.monotonic() < deadline - 0.001:
                    log.info("%s: a pooled connection was dead (%s); reconnecting", self.describe(), _first_line(exc))
                    continue
                healthy = not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
                raise self._translate(exc) from None
            except (Conflict, RegressionError):
                healthy = not fired and conn.info.transaction_status == TransactionStatus.IDLE
                raise
            finally:
                self._pool.give(conn, healthy and not conn.broken)

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        """Every plain renewal among ``items`` in one statement (:func:`~celery_leader.backends.sql.renew_many_sql`).

        A plain renewal is what :meth:`SqlLock.update` sends as one statement without a
        notification (the lock's own term, same holder): each row is compared with its own
        expected version, and a row that moved on is that item's :class:`Conflict` only.
        Anything else (a new term that raises the fence, a release that notifies, an absent
        row, a version that is not ours, a second item for a row already in the statement)
        goes through its lock's own :meth:`~SqlLock.update` afterwards, in the time left, so
        fencing and notifications stay exactly as they are. A failure of the statement
        (server gone, no answer within ``timeout``) is the outcome of each item in it.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        todo = sort_items(
            items,
            self.describe(),
            lambda lock: isinstance(lock, PostgresLock) and lock._pg is self,
            lambda lock, item: lock._renewal(item[1], item[2]) if isinstance(lock, PostgresLock) else None,
            lambda lock: lock.name,
        )
        if todo.batched:
            names = [items[i][0].name for i, _ in todo.batched]
            expected, records, holders, tokens = (list(column) for column in zip(*(plain for _, plain in todo.batched)))

            def renew(cur: Any, t: Tables) -> set[str]:
                cur.execute(renew_many_sql(t), [names, expected, records, holders, tokens])
                return {row[0] for row in cur.fetchall()}

            try:
                written: set[str] | Exception = self._call(deadline - time.monotonic(), renew)
            except (BackendUnavailable, ConfigurationError, Conflict) as exc:
                written = exc  # nothing is known about any row of the statement
            for (i, _), name, exp in zip(todo.batched, names, expected):
                if isinstance(written, Exception):
                    todo.out[i] = written
                elif name in written:
                    todo.out[i] = str(exp + 1)
                else:
                    todo.out[i] = Conflict(f"{name}: the stored version is no longer {exp}")
        return send_alone(items, todo, deadline)

    @staticmethod
    def _set_timeouts(conn: Any, left: float) -> None:
        """``statement_timeout``/``lock_timeout`` in whole seconds (changed rarely: no extra round trip per call)."""
        secs = max(1, math.ceil(left))
        if getattr(conn, "_celery_leader_timeout", None) == secs:
            return
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
            [f"{secs}s", f"{secs}s"],
        )
        conn._celery_leader_timeout = secs

    def _translate(self, exc: BaseException, *, connecting: bool = False) -> Exception:
        state = getattr(exc, "sqlstate", None)
        text = scrub(_first_line(exc), self.url)
        password = self._conninfo.get("password")
        if password:
            text = text.replace(password, "***")
        where = self.describe()
        if state in _RACE_STATES:
            return Conflict(f"{where}: lost a race ({text})")
        if state == "42501":
            return ConfigurationError(
                f"{where}: permission denied ({text}); as an owner run: GRANT SELECT, INSERT, UPDATE ON "
                f"{self._tables.lease}, {self._tables.fence} TO {self._role()}"
            )
        if state == "42P01":
            return ConfigurationError(
                f"{where}: the lease tables ({self._tables.lease}, {self._tables.fence}) are missing; they are "
                "created on first use by a role with CREATE, or run the DDL in docs/postgresql.md"
            )
        if connecting and any(
            words in text for words in ("password authentication failed", "does not exist", "no pg_hba.conf entry",
                                        "no password supplied", "role \"")
        ):
            return ConfigurationError(f"{where}: cannot log in: {text}")
        return BackendUnavailable(f"{where}: {type(exc).__name__}: {text}")

    def _role(self) -> str:
        user = self._conninfo.get("user") or os.environ.get("PGUSER") or "<role>"
        return '"' + user.replace('"', '""') + '"'

    # --- tables ------------------------------------------------------------------------------

    def _ensure_tables(self, deadline: float) -> None:
        """Create the tables on first use (once per backend); name the GRANT a role without it needs."""
        if self._ready:
            return
        with self._ready_guard:
            if self._ready:
                return
            lease, fence = self._tables.lease, self._tables.fence

            def ensure(cur: Any, t: Tables) -> None:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", [lease, fence])
                row = cur.fetchone()
                if not (row[0] and row[1]):
                    try:
                        cur.execute("BEGIN")
                        cur.execute(ddl(self.table))
                        cur.execute("COMMIT")
                    except psycopg.Error as exc:
                        cur.execute("ROLLBACK")
                        if getattr(exc, "sqlstate", None) in ("23505", "42P07"):
                            pass  # created by another candidate at the same moment
                        elif getattr(exc, "sqlstate", None) == "42501":
                            raise ConfigurationError(
                                f"{self.describe()}: the lease tables do not exist and role {self._role()} may not create "
                                f"them ({_first_line(exc)}); as an owner run: GRANT CREATE ON SCHEMA "
                                f"{self._schema()} TO {self._role()}; or create them with the DDL in "
                                "docs/postgresql.md (celery_leader.backends.postgresql.ddl())"
                            ) from None
                        else:
                            raise
                # one privilege per call: a list means "any of them"
                cur.execute(
                    "SELECT bool_and(has_table_privilege(t, p)) FROM unnest(%s::text[]) t, unnest(%s::text[]) p",
                    [[lease, fence], ["SELECT", "INSERT", "UPDATE"]],
                )
                allowed = cur.fetchone()
                if not allowed[0]:
                    raise ConfigurationError(
                        f"{self.describe()}: role {self._role()} may not read and write the lease tables; as an owner "
                        f"run: GRANT SELECT, INSERT, UPDATE ON {lease}, {fence} TO {self._role()}"
                    )

            self._run(deadline, ensure)
            self._ready = True

    def _schema(self) -> str:
        return f'"{self.table.split(".")[0]}"' if "." in self.table else "public"

    # --- start-up and housekeeping -----------------------------------------------------------

    def check(self, timeout: float = 5.0) -> None:
        """Reachable, logged in, tables there (or created) and writable by this role."""
        self._call(timeout, lambda cur, t: None)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()

    def describe(self) -> str:
        return redact(self.url)


def _host_port(hostport: str) -> tuple[str, str]:
    """``host``, ``host:port``, ``[v6]:port`` or a comma list (libpq's multi-host form)."""
    hosts, ports = [], []
    for item in hostport.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        if port and not port.isdigit():
            raise ValueError(port)
        hosts.append(unquote(host))
        ports.append(port)
    return ",".join(hosts), (",".join(ports) if any(ports) else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
