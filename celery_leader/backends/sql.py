"""The SQL core shared by ``django://`` and ``postgresql://``: one lease row per election.

Two tables (the names vary by backend, the columns do not):

``lease``  ``name`` (unique), ``record`` (the Go seed's JSON), ``version`` (bigint, the
           compare-and-swap counter), ``holder`` and ``token`` (copies for humans and queries)
``fence``  ``name`` (unique), ``token``: the highest fencing token ever written per name;
           it survives a deleted lease row, so tokens never go backwards.

Compare-and-swap is one conditional statement in autocommit mode, so no transaction is ever
held across a lease:

* create-if-absent: ``INSERT`` of a unique ``name`` (``ON CONFLICT DO NOTHING`` on
  PostgreSQL; a unique violation elsewhere), none inserted is :class:`Conflict`;
* update: ``UPDATE ... SET version = expected + 1 WHERE name = %s AND version = expected``,
  no row updated is :class:`Conflict`.

A new row starts its version at the current time in microseconds and every write adds one,
so a row deleted and created again never reuses a version a stale candidate holds. Starting
a new term (a token this lock has not written) raises the fence in the same short
transaction; renewals and releases of the writer's own term stay one statement, and on
PostgreSQL many locks' renewals can go in one statement together (:func:`renew_many_sql`).
A row deleted by hand while its fence remains reads as held by :data:`VANISHED_HOLDER`
(see :func:`versioned`): its holder may still be inside its lease, so every candidate, even
one that never saw the old record, waits one lease before starting the next term.

A backend provides ``_call(timeout, fn)``, which runs ``fn(cursor, tables)`` on a
connection in autocommit mode and translates driver errors, and optionally a
:class:`Listener` (PostgreSQL ``LISTEN``) for :meth:`SqlLock.wait_for_change`.
Notifications are best effort: a writer sends one after its write has landed, only when
the holder changes (renewals stay one statement), and a failed ``NOTIFY`` is logged, never
raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, TypeVar

from ..errors import BackendUnavailable, Conflict, RegressionError
from ..lock import Lock, Versioned
from ..record import MAX_RECORD_BYTES, LeaderRecord, decode_or_placeholder, encode_record
from .notify import ChangeNotifier

__all__ = [
    "ABSENT",
    "VANISHED_HOLDER",
    "Tables",
    "Write",
    "SqlLock",
    "Listener",
    "Watchdog",
    "channel_for",
    "fetch",
    "renew_many_sql",
    "row_record",
    "versioned",
]

log = logging.getLogger(__name__)

ABSENT = "absent:"
#: the holder a deleted lease row reads as (its fence remains): whoever held it may still
#: believe it leads, so candidates wait one lease before taking over with a higher token
VANISHED_HOLDER = "(lease row deleted)"
T = TypeVar("T")


@dataclass(frozen=True)
class Tables:
    """Quoted table names, the SQL dialect, and the ``NOTIFY`` channel (PostgreSQL only)."""

    lease: str
    fence: str
    vendor: str
    channel: str | None = None


@dataclass(frozen=True)
class Write:
    """One conditional write: its SQL (given the table names), parameters, the version it stores."""

    sql: Callable[[Tables], str]
    params: list[Any]
    version: str
    conflict: str  # the Conflict message when no row was written

    def run(self, cur: Any, t: Tables) -> str:
        cur.execute(self.sql(t), self.params)
        if cur.rowcount != 1:
            raise Conflict(self.conflict)
        return self.version


class SqlBackend(Protocol):
    _listener: Listener | None

    def _call(self, timeout: float, fn: Callable[[Any, Tables], T]) -> T: ...


def channel_for(table: str) -> str:
    """The ``NOTIFY`` channel of a lease table (an identifier: at most 63 bytes)."""
    channel = f"{table}_changes"
    if len(channel.encode()) > 63:
        channel = "celery_leader_" + hashlib.sha1(table.encode()).hexdigest()[:32]
    return channel


def fetch(cur: Any, t: Tables, name: str) -> tuple[str | None, int | None, int | None]:
    """(record, version, fence) in one round trip; ``None`` for what does not exist.

    At most ``MAX_RECORD_BYTES + 1`` characters of the record cross the network: a longer
    one is not a record, and its start is enough to read it as unreadable (the version is
    the row's counter, not the text).
    """
    cur.execute(
        f"SELECT SUBSTR(l.record, 1, {MAX_RECORD_BYTES + 1}), l.version, f.token FROM (SELECT %s AS name) n "
        f"LEFT JOIN {t.lease} l ON l.name = n.name LEFT JOIN {t.fence} f ON f.name = n.name",
        [name],
    )
    row = cur.fetchone()
    if row is None:
        return None, None, None
    return row[0], (int(row[1]) if row[1] is not None else None), (int(row[2]) if row[2] is not None else None)


def row_record(text: object) -> LeaderRecord:
    """The record in a lease row's text column; never raises (a placeholder for garbage).

    Drivers hand back ``str``, or ``bytes``/``memoryview`` for binary collations.
    """
    if isinstance(text, memoryview):
        text = text.tobytes()
    if isinstance(text, bytearray):
        text = bytes(text)
    if not isinstance(text, (str, bytes)):
        text = "" if text is None else str(text)
    return decode_or_placeholder(text)


def versioned(text: object, version: object, fence: int | None, vanished_holder: str = VANISHED_HOLDER) -> Versioned | None:
    """What one read of a lease row and its fence row means; ``None`` when neither exists.

    A row that is gone while its fence remains was deleted by hand: it reads as held by
    ``vanished_holder`` at the fence's token (absent version ``absent:<fence>``), so that a
    candidate that never saw the old record still waits one lease before starting a term
    (the engine's rule for a held record; "" would read it as free). A token below the
    fence (a hand edit, a foreign writer, garbage) is lifted to the fence.
    Shared by :meth:`SqlLock.get` and Django's status pages.
    """
    if text is None:
        if fence is None:
            return None
        return Versioned(LeaderRecord(holder=vanished_holder, transitions=fence), f"{ABSENT}{fence}")
    record = row_record(text)
    if fence is not None and fence > record.transitions:
        # the engine can overwrite it once it is stale, and the next term counts from the fence
        record = record.evolve(transitions=fence)
    return Versioned(record, str(version))


class SqlLock(Lock):
    """The lease row ``name``. Thread-safe: every call borrows a connection from the backend."""

    #: the holder a deleted lease row reads as (its fence remains); "" would read it as free
    vanished_holder: ClassVar[str] = VANISHED_HOLDER

    def __init__(self, backend: SqlBackend, name: str) -> None:
        self._backend = backend
        self.name = name
        #: the token this lock put into the fence (its own term): renewals of it skip the fence
        self._written = -1
        #: the holder of this lock's last write: a renewal by the same holder sends no notification
        self._written_holder: str | None = None

    def recover_hint(self) -> str:
        """How a human clears a row that blocks the fence (names the table)."""
        return f"delete that lease row (name {self.name!r}) to recover: the fence stays"

    # --- the contract ----------------------------------------------------------------------

    def get(self, timeout: float) -> Versioned | None:
        text, version, fence = self._backend._call(timeout, lambda cur, t: fetch(cur, t, self.name))
        return versioned(text, version, fence, self.vanished_holder)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._insert(record, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        if isinstance(expected_version, str) and expected_version.startswith(ABSENT):
            # the row was absent when read: insert it (unique name: one winner), above the fence
            if not expected_version[len(ABSENT) :].isdigit():
                raise Conflict(f"{self.name}: {expected_version!r} is not a version of this backend")
            return self._insert(record, timeout)
        try:
            expected = int(expected_version)
        except (TypeError, ValueError):
            raise Conflict(f"{self.name}: {expected_version!r} is not a version of this backend") from None
        raw = encode_record(record).decode()
        token = int(record.transitions)
        write = Write(
            lambda t: f"UPDATE {t.lease} SET record = %s, version = %s, holder = %s, token = %s WHERE name = %s AND version = %s",
            [raw, expected + 1, record.holder, token, self.name, expected],
            str(expected + 1),
            f"{self.name}: the stored version is no longer {expected}",
        )
        if token == self._written:
            # a renewal (or the release) of this lock's own term: one statement in autocommit;
            # only a change of holder (the release) is worth a notification
            notify = record.holder != self._written_holder
            version = self._backend._call(timeout, self._then_notify(write.run, notify))
            self._written_holder = record.holder
            return version
        return self._fenced_write(write, record.holder, token, timeout, regression_is_conflict=False)

    def _renewal(self, record: LeaderRecord, expected_version: object) -> tuple[int, str, str, int] | None:
        """``(expected, encoded record, holder, token)`` if :meth:`update` would send this
        write as its one plain statement with no notification (a renewal of this lock's own
        term by the same holder); ``None`` for anything else (an absent row, a version that
        is not ours, a new term that raises the fence, a release that notifies), which must
        go through :meth:`update` itself. A batch sends these with :func:`renew_many_sql`.
        """
        if not isinstance(expected_version, str) or expected_version.startswith(ABSENT):
            return None
        try:
            expected = int(expected_version)
        except ValueError:
            return None
        token = int(record.transitions)
        if token != self._written or record.holder != self._written_holder:
            return None
        return expected, encode_record(record).decode(), record.holder, token

    def _insert(self, record: LeaderRecord, timeout: float) -> str:
        version = time.time_ns() // 1000
        raw = encode_record(record).decode()
        token = int(record.transitions)

        def sql(t: Tables) -> str:
            insert = f"INSERT INTO {t.lease} (name, record, version, holder, token) VALUES (%s, %s, %s, %s, %s)"
            # on PostgreSQL the losers get no error: nothing in the server log, the transaction stays usable
            return insert + " ON CONFLICT (name) DO NOTHING" if t.vendor == "postgresql" else insert

        write = Write(sql, [self.name, raw, version, record.holder, token], str(version), f"{self.name}: the lease exists")
        return self._fenced_write(write, record.holder, token, timeout, regression_is_conflict=True)

    def _transaction(self, write: Write, holder: str, token: int) -> Callable[[Any, Tables], str]:
        """``write`` and raising the fence to ``token``, in one short transaction (a call for ``_call``).

        A token below the fence is refused; one equal to it may only continue the same term
        (same holder as the row had, or a release), never start a new one.
        """

        def transaction(cur: Any, t: Tables) -> str:
            conn = getattr(cur, "connection", None)
            if t.vendor == "postgresql" and _can_pipeline(conn):
                return self._pipelined(cur, conn, t, write, holder, token)
            cur.execute("BEGIN IMMEDIATE" if t.vendor == "sqlite" else "BEGIN")
            try:
                cur.execute(f"SELECT holder FROM {t.lease} WHERE name = %s", [self.name])
                previous = cur.fetchone()
                version = write.run(cur, t)
                cur.execute(f"SELECT token FROM {t.fence} WHERE name = %s", [self.name])
                row = cur.fetchone()
                if row is None:
                    cur.execute(f"INSERT INTO {t.fence} (name, token) VALUES (%s, %s)", [self.name, token])
                elif int(row[0]) < token:
                    cur.execute(f"UPDATE {t.fence} SET token = %s WHERE name = %s", [token, self.name])
                elif int(row[0]) > token or not (holder == "" or (previous is not None and previous[0] == holder)):
                    raise RegressionError(int(row[0]))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return version

        return transaction

    def _pipelined(self, cur: Any, conn: Any, t: Tables, write: Write, holder: str, token: int) -> str:
        """The same transaction in two round trips instead of six (psycopg 3's pipeline mode).

        The first flight reads the previous holder, writes the row, raises the fence if the
        token is above it (an upsert that leaves a higher or equal fence alone) and reads the
        fence; the second commits or rolls back. Every writer locks the lease row before the
        fence row, so concurrent candidates queue on the lease row and never deadlock.
        """
        previous, written, raised, fence = (conn.cursor() for _ in range(4))
        # under Django, translate driver errors as its own cursor does
        wrap = getattr(getattr(cur, "db", None), "wrap_database_errors", None) or contextlib.nullcontext()
        try:
            with wrap, conn.pipeline():
                cur.execute("BEGIN")
                previous.execute(f"SELECT holder FROM {t.lease} WHERE name = %s", [self.name])
                written.execute(write.sql(t), write.params)
                raised.execute(
                    f"INSERT INTO {t.fence} AS f (name, token) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token WHERE f.token < EXCLUDED.token",
                    [self.name, token],
                )
                fence.execute(f"SELECT token FROM {t.fence} WHERE name = %s", [self.name])
            row = previous.fetchone()
            highest = int(fence.fetchone()[0])
            if written.rowcount != 1:
                raise Conflict(write.conflict)
            if raised.rowcount != 1 and (highest > token or not (holder == "" or (row is not None and row[0] == holder))):
                raise RegressionError(highest)
            cur.execute("COMMIT")
        except BaseException:
            if not getattr(conn, "broken", False):
                cur.execute("ROLLBACK")
            raise
        finally:
            for c in (previous, written, raised, fence):
                c.close()
        return write.version

    def _fenced_write(self, write: Write, holder: str, token: int, timeout: float, *, regression_is_conflict: bool) -> str:
        """Start a new term: the write and the fence in one transaction; then notify."""
        try:
            version = self._backend._call(timeout, self._then_notify(self._transaction(write, holder, token), True))
        except RegressionError as exc:
            fence = exc.args[0]
            if regression_is_conflict:
                raise Conflict(f"{self.name}: token {token} is not above the fence ({fence}); read again") from None
            # The engine computes tokens from what it read, and get() lifts every token to the
            # fence, so this happens only over a record it could not decode (it then counts from
            # 0). Not Conflict: that would make it retry at once, forever; this backs off.
            raise BackendUnavailable(
                f"{self.name}: refused to write fencing token {token} for a new term: tokens up to {fence} were already "
                "handed out and tokens never go backwards; the lease row probably holds something that "
                f"is not a leader record ({self.recover_hint()})"
            ) from None
        self._written = token
        self._written_holder = holder
        return version

    def _then_notify(self, write: Callable[[Any, Tables], str], notify: bool) -> Callable[[Any, Tables], str]:
        """``write``, then (best effort, after it landed) a ``NOTIFY`` for the listeners."""
        if not notify or self._backend._listener is None:
            return write

        def written_then_notified(cur: Any, t: Tables) -> str:
            version = write(cur, t)
            try:
                cur.execute("SELECT pg_notify(%s, %s)", [t.channel, f"{version} {self.name}"])
            except Exception as exc:  # noqa: BLE001 - the write has landed: a lost notification only slows a follower
                log.debug("%s: NOTIFY after a write failed: %s", self.name, exc)
            return version

        return written_then_notified

    def _current_version(self, timeout: float) -> str | None:
        text, version, fence = self._backend._call(timeout, lambda cur, t: fetch(cur, t, self.name))
        if text is None:
            return f"{ABSENT}{fence}" if fence is not None else None
        return str(version)

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        listener = self._backend._listener
        if listener is None:
            time.sleep(max(0.0, timeout))
            return
        listener.wait(self.name, lambda left: self._current_version(min(left, 5.0)), version, timeout, waiter=self)

    def write_raw(self, raw: bytes, timeout: float = 5.0) -> str:
        """Store text as it is, bypassing the codec and the fence (tests of garbage and foreign records)."""
        text = raw.decode("utf-8", "replace").replace("\x00", "\ufffd")

        def put(cur: Any, t: Tables) -> str:
            text_found, version_found, _ = fetch(cur, t, self.name)
            version = (version_found + 1) if text_found is not None and version_found is not None else time.time_ns() // 1000
            if text_found is not None:
                cur.execute(f"UPDATE {t.lease} SET record = %s, version = %s WHERE name = %s", [text, version, self.name])
            else:
                cur.execute(
                    f"INSERT INTO {t.lease} (name, record, version, holder, token) VALUES (%s, %s, %s, '', 0)",
                    [self.name, text, version],
                )
            return str(version)

        return self._backend._call(timeout, self._then_notify(put, True))


def renew_many_sql(t: Tables) -> str:
    """One statement (PostgreSQL) that renews many lease rows, each against its own version.

    Parameters: five arrays of equal length, one entry per row (names unique):
    ``name text[], expected bigint[], record text[], holder text[], token bigint[]``.
    Each row is written exactly as :meth:`SqlLock.update` writes a renewal (``version =
    expected + 1``, the record, the holder and token copies) if, and only if, its stored
    version is its own ``expected``; ``RETURNING`` names the rows written, every other one
    is that row's :class:`Conflict`. The rows are locked in name order first (``ORDER BY
    ... FOR UPDATE`` in a materialized CTE), so two batches over the same rows (a stale
    leader's late renewal beside the new leader's) queue instead of deadlocking.
    """
    return (
        f"WITH v AS MATERIALIZED (SELECT l.name, v.expected, v.record, v.holder, v.token FROM {t.lease} l "
        "JOIN unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[]) AS v(name, expected, record, holder, token) "
        "ON l.name = v.name AND l.version = v.expected ORDER BY l.name FOR UPDATE OF l) "
        f"UPDATE {t.lease} AS l SET record = v.record, version = v.expected + 1, holder = v.holder, token = v.token "
        "FROM v WHERE l.name = v.name AND l.version = v.expected RETURNING l.name"
    )


_PIPELINE: bool | None = None


def _can_pipeline(conn: Any) -> bool:
    """A psycopg 3 connection whose libpq has pipeline mode (14+)."""
    global _PIPELINE
    if conn is None or not callable(getattr(conn, "pipeline", None)):
        return False
    if _PIPELINE is None:
        try:
            from psycopg import Pipeline

            _PIPELINE = bool(Pipeline.is_supported())
        except ImportError:
            _PIPELINE = False
    return _PIPELINE


# --- bounding blocking driver calls -----------------------------------------------------


class Watchdog:
    """Shuts down the socket of a call that outlives its deadline, so the blocked driver returns.

    Neither libpq nor psycopg bound a query on the client side; a server that stops
    answering (or a network path that silently drops packets) would block the caller
    forever. ``shutdown(2)`` on the connection's socket wakes the blocked read at once with
    an error, on any driver; the caller then drops the connection. One thread serves every
    armed call; arming wakes it only when the new deadline comes before its next planned
    wake-up (so a renewal costs no thread switch), and it ends after a minute without calls.
    With nothing armed it sleeps until then (it used to look once a second: an idle
    standby's only regular wake-up besides its reads).
    """

    IDLE_EXIT = 60.0

    def __init__(self, name: str = "celery-leader-sql-watchdog") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}
        self._fired: set[int] = set()
        self._next = 0
        self._next_wake = math.inf
        self._last_arm = 0.0
        self._thread: threading.Thread | None = None
        #: times the thread woke up (the tests count them)
        self.wakeups = 0

    def arm(self, fileno: int, deadline: float) -> int:
        with self._cond:
            self._last_arm = time.monotonic()
            self._next += 1
            ticket = self._next
            self._armed[ticket] = (deadline, fileno)
            if self._thread is None:
                self._next_wake = deadline
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif deadline < self._next_wake:
                self._next_wake = deadline
                self._cond.notify()
            return ticket

    def disarm(self, ticket: int) -> bool:
        """Forget ``ticket``; ``True`` if it had fired (its socket was shut down)."""
        with self._cond:
            self._armed.pop(ticket, None)
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                self.wakeups += 1
                now = time.monotonic()
                for ticket, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        # under the lock: the caller cannot have given the connection to another call
                        del self._armed[ticket]
                        self._fired.add(ticket)
                        _shutdown(fd)
                if self._armed:
                    wake = min(deadline for deadline, _ in self._armed.values())
                elif now - self._last_arm >= self.IDLE_EXIT:
                    self._thread = None  # arm() starts another
                    self._next_wake = math.inf
                    return
                else:
                    # nothing armed: arm() wakes the thread for any deadline before this
                    wake = self._last_arm + self.IDLE_EXIT
                self._next_wake = wake
                self._cond.wait(max(0.0, wake - now))


def _shutdown(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()  # closes the duplicate only; the driver still owns ``fd``


# --- LISTEN ------------------------------------------------------------------------------


class Listener(ChangeNotifier):
    """One ``LISTEN`` connection per backend, shared by every lock waiting for a change.

    ``connect()`` returns a DB-API connection in autocommit mode (psycopg 3 or psycopg2).
    The waiting is :class:`~celery_leader.backends.notify.ChangeNotifier`'s; here: an idle
    connection is pinged every ``ping_interval`` under the watchdog, so that a server that
    went silent is noticed and the thread reconnects.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        *,
        watchdog: Watchdog,
        ping_interval: float = 5.0,
        ping_timeout: float = 2.0,
        label: str = "postgresql",
    ) -> None:
        super().__init__()
        self._connect = connect
        self.channel = channel
        self._watchdog = watchdog
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._label = label
        self.label = f"{label} LISTEN"
        self.listening = self.ready
        self._conn: Any = None

    def _forked(self) -> None:
        self._conn = None  # the parent's session: never close it from here

    def _interrupt(self) -> None:
        conn = self._conn
        if conn is not None:
            _shutdown(conn.fileno())

    def _listen(self) -> None:
        conn = self._connect()
        self._conn = conn
        try:
            self._execute(conn, f'LISTEN "{self.channel}"')
            self._connected()
            idle_since = time.monotonic()
            while not self._stopping.is_set():
                # block until a notification or the next ping is due (stop() shuts the socket down)
                due = self._ping_interval - (time.monotonic() - idle_since)
                got = _notifications(conn, min(self.IDLE_READ, max(0.01, due)))
                for channel, payload in got:
                    if channel == self.channel:
                        self._deliver(payload)
                if got:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self._ping_interval:
                    self._execute(conn, "SELECT 1")
                    idle_since = time.monotonic()
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()

    def _execute(self, conn: Any, sql: str) -> None:
        ticket = self._watchdog.arm(conn.fileno(), time.monotonic() + self._ping_timeout)
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql)
            finally:
                cur.close()
        finally:
            if self._watchdog.disarm(ticket):
                raise BackendUnavailable(f"{self._label} LISTEN connection: no answer within {self._ping_timeout:g} s")


def _notifications(conn: Any, timeout: float) -> list[tuple[str, str]]:
    """Notifications received within ``timeout`` (psycopg 3 or psycopg2).

    The wait is a plain block on the socket: psycopg 3's own ``notifies(timeout=...)`` wakes
    every 0.1 s (its ``wait`` interval, so that Ctrl-C gets through), which made an idle
    standby's listening thread run ten times a second. Only ``timeout=0`` calls go through
    the driver: they return what it has buffered (notifications that came with another
    statement's answer) and what the socket holds, without blocking.
    """
    if callable(getattr(conn, "notifies", None)):  # psycopg 3
        got = [(n.channel, n.payload) for n in conn.notifies(timeout=0)]
        if not got and _readable(conn.fileno(), timeout):
            got = [(n.channel, n.payload) for n in conn.notifies(timeout=0)]
        return got
    # psycopg2: notifications arrive on poll(); wait for the socket first
    if not conn.notifies and _readable(conn.fileno(), timeout):
        conn.poll()
    got = [(n.channel, n.payload) for n in conn.notifies]
    del conn.notifies[:]
    return got


def _readable(fd: int, timeout: float) -> bool:
    """Block until ``fd`` is readable (data, end of stream or an error) or ``timeout`` passes."""
    if timeout <= 0:
        return True  # the caller's non-blocking read looks
    if hasattr(select, "poll"):  # no FD_SETSIZE limit
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(timeout * 1000.0))
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)
