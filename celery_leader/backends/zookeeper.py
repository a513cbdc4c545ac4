"""``zookeeper://[user:password@]host:2181[,host2:2181]/PATH``: leases in ZooKeeper, with kazoo.

Layout under ``PATH`` (default ``/celery-leader``):

``PATH/lock/<name>``
    the record as the Go seed's JSON (unknown keys preserved).
``PATH/fence/<name>``
    the highest fencing token ever written, as decimal text. Every write of ours changes it
    in the same multi-operation as the lock node, and we never delete it, so tokens never
    go backwards even if the lock node is deleted by hand.

Compare-and-swap is one ZooKeeper ``multi``: ``setData`` (or ``create``) of the lock node at
the version read, and of the fence node at the version read. Because a node's version
restarts at 0 when it is recreated, the fence's version (which only grows) is part of
every comparison. The version handed to the engine is ``"<lock version>:<fence version>:
<fence>"`` with ``-`` for an absent node (``g`` in front for undecodable content).

No ephemeral nodes: the lease is decided by the engine on local clocks, as for every other
backend; the ZooKeeper session only carries requests and data watches. A call is never
queued while the session is disconnected: it waits for the connection up to its own
timeout, then raises :class:`BackendUnavailable`, so a leader whose session is suspended
or lost stops at its deadline like with any other unreachable backend.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

try:
    from kazoo.client import KazooClient, KazooState
    from kazoo.exceptions import (
        AuthFailedError,
        BadVersionError,
        ConnectionClosedError,
        KazooException,
        NoAuthError,
        NodeExistsError,
        NoNodeError,
        RolledBackError,
        RuntimeInconsistency,
        ZookeeperError,
    )
    from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
    from kazoo.handlers.utils import selector_select
    from kazoo.retry import KazooRetry
    from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE, READ_ACL_UNSAFE
except ImportError as exc:  # pragma: no cover - the registry turns this into the pip hint
    raise ImportError(exc.msg, name="kazoo") from exc

from ..lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict, Lock, Versioned
from ..record import LeaderRecord, encode_record
from ..urls import redact
from ._coordination import base_path, fence_number, fenced_record, refuse_lower_token, split_url, users_and_hosts

__all__ = ["ZooKeeperBackend", "ZooKeeperLock", "VANISHED_HOLDER", "DEFAULT_PATH"]

log = logging.getLogger(__name__)

#: ZAB: writes are acknowledged by a quorum and totally ordered; a minority side cannot
#: write. A read is preceded by ``sync`` (pipelined), so it sees every write acknowledged
#: before it - except the read right after this lock's data watch fired (see
#: :meth:`ZooKeeperLock.get`); a stale read could only make a compare-and-swap fail anyway.
CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)

DEFAULT_PORT = 2181
DEFAULT_PATH = "/celery-leader"
DEFAULT_SESSION_TIMEOUT = 10.0
VANISHED_HOLDER = "(lock node vanished)"
ABSENT = "-"
OPTIONS = ("session_timeout",)
#: ``call_many(missing=_RAISE)``: a missing node raises NoNodeError
_RAISE = object()


class _Handler(SequentialThreadingHandler):
    """kazoo's threading handler with a cheaper ``select``.

    kazoo's own makes, registers and closes a new epoll selector on every call (four
    system calls and a few dozen Python calls), and its connection thread calls it several
    times per request and per answer: the bulk of an idle standby's CPU. ``select.select``
    does the same for the one or two sockets kazoo passes; only a descriptor above
    ``FD_SETSIZE`` (1024), which ``select`` cannot take, goes the selector way.
    """

    def select(self, rlist: Any, wlist: Any, xlist: Any, timeout: float | None = None) -> Any:
        try:
            return select.select(rlist, wlist, xlist, timeout)
        except ValueError:  # a descriptor >= FD_SETSIZE (or a bad timeout: the selector says so too)
            return selector_select(rlist, wlist, xlist, timeout)

    def dispatch_callback(self, callback: Any) -> None:
        """A data watch of one of our locks fires inline, on the connection thread: its
        callback only counts and notifies a condition, which never blocks for long. kazoo
        hands every callback to its callback thread (two more wake-ups per event, one per
        renewal of a standby's leader); any other callback still goes there, in order."""
        if getattr(callback.func, "__func__", None) is ZooKeeperLock._wake:
            try:
                callback.func(*callback.args)
            except Exception:  # noqa: BLE001 - as kazoo's callback thread: logged, never raised into the connection
                log.exception("a ZooKeeper watch callback failed")
            return
        super().dispatch_callback(callback)


def _version(lock_version: int | None, fence_version: int | None, fence: int, garbage: bool) -> str:
    def v(n: int | None) -> str:
        return ABSENT if n is None else str(n)

    return f"{'g' if garbage else ''}{v(lock_version)}:{v(fence_version)}:{fence}"


def _parse_version(version: str) -> tuple[bool, int | None, int | None, int] | None:
    """(strict, lock version, fence version, fence), or None if not one of ours."""
    strict = version.startswith("g")
    parts = (version[1:] if strict else version).split(":")
    if len(parts) != 3:
        return None
    try:
        lock_v = None if parts[0] == ABSENT else int(parts[0])
        fence_v = None if parts[1] == ABSENT else int(parts[1])
        fence = int(parts[2])
    except ValueError:
        return None
    if fence < 0 or (lock_v is not None and lock_v < 0) or (fence_v is not None and fence_v < 0):
        return None
    return strict or lock_v is None, lock_v, fence_v, fence


class ZooKeeperLock(Lock):
    """One election's lock in ZooKeeper. Thread-safe; shares its backend's session."""

    capabilities = CAPABILITIES

    def __init__(self, backend: "ZooKeeperBackend", name: str) -> None:
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise ConfigurationError(f"election name {name!r} cannot be a ZooKeeper node name; use no '/'")
        self._backend = backend
        self.name = name
        self.path = f"{backend.path}/lock/{name}"
        self.fence_path = f"{backend.path}/fence/{name}"
        self._closed = False
        self._changed = threading.Condition()
        self._generation = 0
        self._fired = 0
        #: (generation, fired, version) of the last get(), which set a watch on the lock node
        #: before reading it: while nothing fired or changed session since, ``version`` is
        #: current and a wait for a change from it needs no read of its own
        self._watched: tuple[int, int, str | None] | None = None
        #: reads made by waits (the tests count them)
        self.wait_reads = 0

    # --- reading ----------------------------------------------------------------------

    def _read(
        self, timeout: float, watch: Callable[[Any], None] | None = None, sync: bool = True
    ) -> tuple[bytes | None, int | None, int | None, int]:
        """(lock data, lock version, fence version, fence), in one round trip: the requests
        are pipelined (a session's requests are answered in order): ``sync`` first (unless
        ``sync`` is false), so that the server the session is on has caught up with the
        ensemble's leader and the reads see every write acknowledged before, then the
        fence, then the lock node (with ``watch`` set by the same request: it fires on
        every later change or deletion). A lock node that is not there sets no watch that
        way: then a second round trip sets one with ``exists()`` (it fires on creation)."""
        deadline = time.monotonic() + max(0.0, timeout)
        starts: list[Callable[[KazooClient], Any]] = [
            lambda c: c.get_async(self.fence_path),
            lambda c: c.get_async(self.path, watch=watch),
        ]
        if sync:
            starts.insert(0, lambda c: c.sync_async(self.path))
        results = self._backend.call_many(starts, timeout, missing=(None, None))
        fence_raw, fence_stat = results[-2]
        raw, lock_stat = results[-1]
        if watch is not None and lock_stat is None:
            created = self._backend.call(lambda c: c.exists_async(self.path, watch=watch), max(0.0, deadline - time.monotonic()))
            if created is not None:
                watch("created")  # it appeared after the read: whoever waits must read again
        fence = fence_number(fence_raw, log, self.name, "fence node", self.fence_path) if fence_stat is not None else 0
        return raw, (lock_stat.version if lock_stat is not None else None), (
            fence_stat.version if fence_stat is not None else None
        ), fence

    def _versioned(self, raw: bytes | None, lock_v: int | None, fence_v: int | None, fence: int) -> Versioned | None:
        if raw is None and lock_v is None:
            if fence_v is None:
                return None
            # deleted by hand: reads as held by VANISHED_HOLDER at the fence
            return Versioned(fenced_record(None, fence, VANISHED_HOLDER), _version(None, fence_v, fence, False))
        record = fenced_record(raw or b"", fence, VANISHED_HOLDER)
        return Versioned(record, _version(lock_v, fence_v, fence, record.decode_error is not None))

    def get(self, timeout: float) -> Versioned | None:
        """Read, with a data watch set on the lock node (it rides in the same round trip), so
        that a standby's next :meth:`wait_for_change` from this version needs no read: the
        watch fires for every change after this read.

        The read right after that watch fired, on the same session (no session event since),
        skips the ``sync``: ZooKeeper delivers a watch event only after the session's
        server applied the change, and a session never reads older state than it saw, so
        the read returns that change or a later one - all a standby woken by it needs, and
        a later write its server has not applied yet fires the watch this read sets. A
        standby's read per renewal of its leader is then two requests instead of three.
        """
        with self._changed:
            generation, fired, watched = self._generation, self._fired, self._watched
        # every wake-up since the last read was this lock's data watch (no session event)
        after_event = watched is not None and fired > watched[1] and generation - watched[0] == fired - watched[1]
        raw, lock_v, fence_v, fence = self._read(timeout, watch=self._wake, sync=not after_event)
        current = self._versioned(raw, lock_v, fence_v, fence)
        with self._changed:
            self._watched = (generation, fired, current.version if current else None) if lock_v is not None else None
        return current

    # --- writing ----------------------------------------------------------------------

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._write(record, None, None, record.transitions, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        parsed = _parse_version(expected_version or "")
        if parsed is None:
            raise Conflict(f"{self.name}: {expected_version!r} is not a version of this backend")
        strict, lock_v, fence_v, fence = parsed
        refuse_lower_token(self.name, record.transitions, fence, strict, self.fence_path)
        if lock_v is None and fence_v is None:
            raise Conflict(f"{self.name}: nothing to update (use create)")
        return self._write(record, lock_v, fence_v, max(fence, record.transitions), timeout)

    def _write(self, record: LeaderRecord, lock_v: int | None, fence_v: int | None, fence: int, timeout: float) -> str:
        b = self._backend
        deadline = time.monotonic() + max(0.0, timeout)
        b.ensure_parents(deadline)
        data = encode_record(record)
        fence_data = str(fence).encode()

        def transaction(client: KazooClient) -> Any:
            t = client.transaction()
            if lock_v is None:
                t.create(self.path, data, acl=b.acl)
            else:
                t.set_data(self.path, data, version=lock_v)
            if fence_v is None:
                t.create(self.fence_path, fence_data, acl=b.acl)
            else:
                t.set_data(self.fence_path, fence_data, version=fence_v)
            return t.commit_async()

        results = b.call(transaction, max(0.0, deadline - time.monotonic()))
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            if any(isinstance(f, NoAuthError) for f in failures):
                raise b.no_auth(self.path)
            if all(isinstance(f, (BadVersionError, NodeExistsError, NoNodeError, RolledBackError, RuntimeInconsistency)) for f in failures):
                raise Conflict(f"{self.name}: the lock moved on ({', '.join(type(f).__name__ for f in failures)})")
            raise BackendUnavailable(f"{self.describe()}: write failed: {failures[0]!r}")
        new_lock = 0 if lock_v is None else results[0].version
        new_fence = 0 if fence_v is None else results[1].version
        return _version(new_lock, new_fence, fence, False)

    # --- watching ---------------------------------------------------------------------

    def _wake(self, event: Any = None) -> None:
        """A data watch fired (``event``), or the session changed state (no event): wake the waiters."""
        with self._changed:
            self._generation += 1
            if event is not None:
                self._fired += 1
            self._changed.notify_all()

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        """Read with a data watch set; if unchanged, sleep until the watch fires, or the
        timeout. A session event (suspended, lost, reconnected) makes it read again: a
        watch may have been lost with the session."""
        deadline = time.monotonic() + max(0.0, timeout)
        first = True
        while not self._closed and time.monotonic() < deadline:
            with self._changed:
                generation, fired = self._generation, self._fired
                watched = self._watched if first else None
            first = False
            trusted = False
            if watched is not None and watched[2] == version:
                if fired != watched[1]:
                    return  # the watch the last get() set has fired since: a change
                # the last get() read ``version`` with the watch already set, and the session
                # has not changed since: every later change will fire it
                trusted = generation == watched[0]
            if not trusted:
                self.wait_reads += 1
                current = self._versioned(*self._read(max(0.0, deadline - time.monotonic()), watch=self._wake))
                if (current.version if current else None) != version:
                    return
            with self._changed:
                while self._generation == generation and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._changed.wait(left)
                if self._fired != fired:
                    # the lock node changed (or the watch set by an earlier wait fired):
                    # the engine reads next anyway
                    return

    def close(self) -> None:
        self._closed = True
        self._wake()

    def describe(self) -> str:
        return f"zookeeper node {self.path!r} at {self._backend.describe()}"


class ZooKeeperBackend(Backend):
    """A ZooKeeper ensemble (one or more servers in the URL); one kazoo session for all locks.

    URL options: ``session_timeout`` (seconds, default 10; the server clamps it to
    2-20 ticks). User and password in the URL are sent as ``digest`` authentication and
    the nodes are created readable by anyone, writable only by that user.
    """

    schemes = ("zookeeper",)
    capabilities = CAPABILITIES

    def __init__(
        self,
        hosts: list[tuple[str, int]],
        *,
        path: str = DEFAULT_PATH,
        username: str | None = None,
        password: str | None = None,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        url: str | None = None,
    ) -> None:
        if not hosts:
            raise ConfigurationError("no ZooKeeper servers; write zookeeper://host:2181[,host2:2181]/PATH")
        if (username is None) != (password is None):
            raise ConfigurationError("give both the ZooKeeper user and the password, or neither")
        path = base_path(path, DEFAULT_PATH)
        if "//" in path or any(part in (".", "..") for part in path.split("/")):
            raise ConfigurationError(f"ZooKeeper path {path!r} is not valid; write zookeeper://host:2181/myapp/leader")
        self.hosts = hosts
        self.path = path
        self._auth = [("digest", f"{username}:{password}")] if username is not None else None
        self.acl = (CREATOR_ALL_ACL + READ_ACL_UNSAFE) if username is not None else OPEN_ACL_UNSAFE
        self.session_timeout = session_timeout
        self.url = url or f"zookeeper://{self._hosts_text()}{path}"
        self._client: KazooClient | None = None
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._connected = threading.Event()
        self._closed = False
        self._parents_ready = False
        self._locks: weakref.WeakSet[ZooKeeperLock] = weakref.WeakSet()

    def _hosts_text(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)

    @classmethod
    def from_url(cls, url: str) -> "ZooKeeperBackend":
        parts, shown, options = split_url(url, scheme="zookeeper", service="ZooKeeper", known=OPTIONS)
        session_timeout = options.seconds("session_timeout", DEFAULT_SESSION_TIMEOUT, minimum=0.5, maximum=600.0)
        username, password, hosts = users_and_hosts(
            parts, shown, service="ZooKeeper", default_port=DEFAULT_PORT, member="server", path_word="PATH"
        )
        return cls(
            hosts,
            path=unquote(parts.path),
            username=username,
            password=password,
            session_timeout=float(session_timeout or DEFAULT_SESSION_TIMEOUT),
            url=url,
        )

    def lock(self, name: str) -> ZooKeeperLock:
        if self._closed:
            raise ConfigurationError("this ZooKeeper backend is closed")
        lock = ZooKeeperLock(self, name)
        self._locks.add(lock)
        return lock

    def describe(self) -> str:
        return redact(self.url)

    # --- the session ------------------------------------------------------------------

    def _session(self) -> KazooClient:
        """The kazoo client, started on first use (and anew in a forked child)."""
        with self._guard:
            if self._client is not None and self._pid == os.getpid():
                return self._client
            if self._closed:
                raise BackendUnavailable(f"{self.describe()} is closed")
            self._pid = os.getpid()  # a forked child never touches the parent's client
            self._connected = threading.Event()
            client = KazooClient(
                hosts=self._hosts_text(),
                handler=_Handler(),
                timeout=self.session_timeout,
                auth_data=self._auth,
                default_acl=self.acl,
                # reconnect for ever in the background; every call has its own deadline
                connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0, ignore_expire=True),
                command_retry=None,
            )
            client.add_listener(self._state_changed)
            client.start_async()
            self._client = client
            return client

    def _state_changed(self, state: str) -> None:
        """kazoo's thread: never block here."""
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
            log.debug("zookeeper session %s: %s", self.describe(), state)
        for lock in list(self._locks):
            lock._wake()  # a lost or suspended session may have lost a watch: re-read

    def call(self, start: Callable[[KazooClient], Any], timeout: float) -> Any:
        """Send one request (``start`` returns kazoo's async result); wait at most ``timeout``."""
        return self.call_many([start], timeout)[0]

    def call_many(self, starts: list[Callable[[KazooClient], Any]], timeout: float, missing: Any = _RAISE) -> list[Any]:
        """Send the requests back to back (one round trip), wait at most ``timeout`` for all.

        Never queued while disconnected: without a connection within the timeout, raise
        :class:`BackendUnavailable`. A missing node gives ``missing`` unless it is ``_RAISE``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        client = self._session()
        if not self._connected.wait(max(0.0, deadline - time.monotonic())):
            if client.client_state == "AUTH_FAILED":
                raise ConfigurationError(f"ZooKeeper at {self.describe()} refused the credentials in the URL")
            raise BackendUnavailable(f"not connected to ZooKeeper at {self.describe()} (within {timeout:.3g} s)")
        try:
            pending = [start(client) for start in starts]
            results = []
            for result in pending:
                try:
                    results.append(result.get(timeout=max(0.001, deadline - time.monotonic())))
                except NoNodeError:
                    if missing is _RAISE:
                        raise
                    results.append(missing)
            return results
        except KazooTimeoutError:
            raise BackendUnavailable(f"ZooKeeper at {self.describe()} did not answer in time") from None
        except NoAuthError:
            raise self.no_auth(self.path) from None
        except AuthFailedError:
            raise ConfigurationError(f"ZooKeeper at {self.describe()} refused the credentials in the URL") from None
        except (NoNodeError, NodeExistsError, BadVersionError):
            raise
        except (ConnectionClosedError, ZookeeperError, KazooException) as exc:
            raise BackendUnavailable(f"ZooKeeper at {self.describe()}: {type(exc).__name__} {exc}") from None

    def no_auth(self, path: str) -> ConfigurationError:
        who = "the URL's user" if self._auth else "an unauthenticated client (no USER:PASSWORD@ in the URL)"
        return ConfigurationError(
            f"ZooKeeper at {self.describe()} does not let {who} write {path!r} (NoAuth); use the user that created "
            "the nodes, fix the password, or set the ACL (setAcl) to allow it"
        )

    def ensure_parents(self, deadline: float) -> None:
        """``PATH/lock`` and ``PATH/fence`` exist (the multi's creates need their parents)."""
        if self._parents_ready:
            return
        for parent in (f"{self.path}/lock", f"{self.path}/fence"):

            def create(client: KazooClient, parent: str = parent) -> Any:
                return client.create_async(parent, b"", acl=self.acl, makepath=True)

            try:
                self.call(create, max(0.0, deadline - time.monotonic()))
            except NodeExistsError:
                pass
        self._parents_ready = True

    # --- start-up check ---------------------------------------------------------------

    def check(self, timeout: float = 5.0) -> None:
        """Connected within ``timeout`` (an ensemble with a quorum), parents creatable, nodes writable."""
        deadline = time.monotonic() + timeout
        self.ensure_parents(deadline)
        # an existing lock parent created by another user with a restrictive ACL: writes would fail
        self.call(lambda c: c.set_async(f"{self.path}/lock", b"", version=-1), max(0.001, deadline - time.monotonic()))

    # --- housekeeping -----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lock in list(self._locks):
            lock.close()
        with self._guard:
            client, self._client = self._client, None
        if client is None or self._pid != os.getpid():
            return
        try:
            client.stop()
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the kazoo client failed", exc_info=True)
