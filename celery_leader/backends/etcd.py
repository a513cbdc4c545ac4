"""``etcd://[user:password@]host:2379[,host2:2379]/PREFIX``: leases in etcd v3.

The backend speaks etcd's v3 HTTP/JSON gateway (``/v3/kv/txn``, ``/v3/watch``,
``/v3/auth/authenticate``; etcd >= 3.4) with the standard library's ``http.client``, so
that every call is bounded by the timeout the engine gives it, several cluster members
can be listed, and user/password authentication works. Why not a client library: see
docs/etcd.md ("Why no client library").

Layout, under the URL's path (the key prefix, default ``/celery-leader``):

``<prefix>/lock/<name>``
    the record as the Go seed's JSON (unknown keys preserved).
``<prefix>/fence/<name>``
    the highest fencing token ever written, as decimal text. It is written in the same
    transaction as the lock key and never deleted by us, so tokens never go backwards
    even if the lock key is deleted by hand.

Every write is one transaction that compares the ``mod_revision`` of both keys with the
ones the writer read (0: absent), so nothing can come between the check and the write.
The version handed to the engine is ``"<lock mod_revision>:<fence mod_revision>:<fence
value>"`` (``g`` in front when the lock key held something undecodable): every put gives
a new revision, so identical records still get new versions.

Many elections' renewals go in one transaction of nested ones (:meth:`EtcdBackend.update_many`,
``capabilities.batch``; etcd >= 3.3).
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..lock import (
    Backend,
    BackendUnavailable,
    BatchItem,
    Capabilities,
    ConfigurationError,
    Conflict,
    Lock,
    RenewBatch,
    Versioned,
)
from ..record import LeaderRecord, encode_record
from ..urls import redact
from ._batch import send_alone, sort_items
from ._coordination import base_path, fence_number, fenced_record, refuse_lower_token, split_url, users_and_hosts

__all__ = ["EtcdBackend", "EtcdLock", "VANISHED_HOLDER", "DEFAULT_PREFIX"]

log = logging.getLogger(__name__)

#: raft: a write is acknowledged once a quorum has it, reads are linearizable, and the
#: minority side of a partition can neither read nor write. Renewals batch: one transaction
#: of nested transactions (:meth:`EtcdBackend.update_many`).
CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True, batch=True)

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/celery-leader"
#: the holder a vanished lock key reads as (its fence remains): nobody's identity
VANISHED_HOLDER = "(lock key vanished)"
#: an answer larger than this is not an answer to our small requests
MAX_RESPONSE = 4 * 1024 * 1024
#: at most this long for one TCP/TLS connect, so that a dead member leaves time for the next
DEFAULT_CONNECT_TIMEOUT = 1.0
#: a pooled connection idle for longer is not reused for a write (it may have been closed)
MAX_IDLE = 30.0
OPTIONS = ("tls", "cacert", "cert", "key", "connect_timeout")
#: renewals per transaction of :meth:`EtcdBackend.update_many`. etcd refuses a transaction
#: with more than ``--max-txn-ops`` (default 128) operations, and counts a nested
#: transaction's against what its parent leaves: with N nested renewals of 2 compares and
#: 2 puts each, N + 2 <= 128. A member started with a lower limit halves it (see there).
TXN_RENEWALS = 100
#: request bytes per transaction of :meth:`EtcdBackend.update_many` (records may carry
#: extra keys up to 64 KiB): etcd refuses a request over ``--max-request-bytes`` (default
#: 1.5 MiB); a member started with a lower limit halves it (see there)
TXN_BYTES = 1024 * 1024
_GRANTS = (
    "grant the user a role with read-write permission on the prefix, e.g. "
    "etcdctl role grant-permission ROLE --prefix=true readwrite {prefix}/"
)


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class _Unavailable(BackendUnavailable):
    """The member did not answer (timeout, reset): rotate to the next member for later calls."""


class _NotSent(_Unavailable):
    """The request never reached the member (connect failed): safe to send elsewhere at once."""


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class _State:
    """What one read saw: the lock key's value and revision, the fence's, and the store's revision."""

    raw: bytes | None
    lock_mod: int
    fence_mod: int
    fence: int
    revision: int


def _version(state: _State, record: LeaderRecord | None) -> str | None:
    if state.raw is None and not state.fence_mod:
        return None
    garbage = "g" if record is not None and record.decode_error else ""
    return f"{garbage}{state.lock_mod}:{state.fence_mod}:{state.fence}"


def _parse_version(version: str) -> tuple[bool, int, int, int] | None:
    """(strict, lock mod_revision, fence mod_revision, fence) or None if not one of ours."""
    strict = version.startswith("g")
    parts = version[1:].split(":") if strict else version.split(":")
    if len(parts) != 3:
        return None
    try:
        lock_mod, fence_mod, fence = (int(p) for p in parts)
    except ValueError:
        return None
    if min(lock_mod, fence_mod, fence) < 0:
        return None
    return strict or lock_mod == 0, lock_mod, fence_mod, fence


class EtcdLock(Lock):
    """One election's lock in etcd. Thread-safe; shares its backend's connections."""

    capabilities = CAPABILITIES

    def __init__(self, backend: "EtcdBackend", name: str) -> None:
        if not name:
            raise ConfigurationError("the election name must not be empty")
        self._backend = backend
        self.name = name
        self.key = f"{backend.prefix}/lock/{name}"
        self.fence_key = f"{backend.prefix}/fence/{name}"
        self._closed = False
        #: watch streams of waits that could not use the kept one (close() aborts them)
        self._streams: set[_Stream] = set()
        self._guard = threading.Lock()
        #: the watch kept open between waits, from revision ``_watch_start`` on
        self._watch: _Stream | None = None
        self._watch_start = 0
        self._watch_guard = threading.Lock()
        #: watch streams this lock opened, and waits that used a kept one (the tests count them)
        self.watches_opened = 0
        self.kept_watch_waits = 0

    # --- reading ----------------------------------------------------------------------

    def _read(self, timeout: float) -> _State:
        """Both keys in one transaction without conditions: one consistent snapshot."""
        reply = self._backend.call(
            "kv/txn",
            {"success": [{"request_range": {"key": _b64(self.key)}}, {"request_range": {"key": _b64(self.fence_key)}}]},
            timeout,
            idempotent=True,
        )
        responses = reply.get("responses") or []
        try:
            lock_kvs = (responses[0].get("response_range") or {}).get("kvs") or []
            fence_kvs = (responses[1].get("response_range") or {}).get("kvs") or []
            revision = int((reply.get("header") or {}).get("revision", 0))
            raw = _unb64(lock_kvs[0].get("value", "")) if lock_kvs else None
            lock_mod = int(lock_kvs[0]["mod_revision"]) if lock_kvs else 0
            fence_mod = int(fence_kvs[0]["mod_revision"]) if fence_kvs else 0
            fence_raw = _unb64(fence_kvs[0].get("value", "")) if fence_kvs else b""
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackendUnavailable(f"{self.describe()}: unexpected answer from etcd ({exc!r})") from None
        fence = fence_number(fence_raw, log, self.name, "fence key", self.fence_key) if fence_kvs else 0
        return _State(raw, lock_mod, fence_mod, fence, revision)

    def _versioned(self, state: _State) -> Versioned | None:
        if state.raw is None and not state.fence_mod:
            return None
        # a lock key deleted by hand (its fence remains) reads as held by VANISHED_HOLDER
        record = fenced_record(state.raw, state.fence, VANISHED_HOLDER)
        return Versioned(record, _version(state, record) or "")

    def get(self, timeout: float) -> Versioned | None:
        return self._versioned(self._read(timeout))

    # --- writing ----------------------------------------------------------------------

    def create(self, record: LeaderRecord, timeout: float) -> str:
        # both keys absent; a fence without a lock key is a vanished lock: get() shows it
        return self._write(record, 0, 0, record.transitions, timeout, "the lock exists")

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        parsed = _parse_version(expected_version or "")
        if parsed is None:
            raise Conflict(f"{self.name}: {expected_version!r} is not a version of this backend")
        strict, lock_mod, fence_mod, fence = parsed
        refuse_lower_token(self.name, record.transitions, fence, strict, self.fence_key)
        return self._write(record, lock_mod, fence_mod, max(fence, record.transitions), timeout, "the stored version moved on")

    def _txn(self, record: LeaderRecord, lock_mod: int, fence_mod: int, fence: int) -> dict[str, Any]:
        """The write's transaction: both keys compared with the revisions read, both put."""
        return {
            "compare": [
                {"key": _b64(self.key), "target": "MOD", "mod_revision": str(lock_mod), "result": "EQUAL"},
                {"key": _b64(self.fence_key), "target": "MOD", "mod_revision": str(fence_mod), "result": "EQUAL"},
            ],
            "success": [
                {"request_put": {"key": _b64(self.key), "value": _b64(encode_record(record))}},
                {"request_put": {"key": _b64(self.fence_key), "value": _b64(str(fence))}},
            ],
        }

    def _renewal(self, record: LeaderRecord, expected_version: object) -> dict[str, Any] | None:
        """:meth:`update`'s transaction if this write renews the term the fence already holds
        (same token, a lock key that exists and was readable); ``None`` for anything else
        (a new term, a garbage or absent key, a version that is not ours), which
        :meth:`update` itself must send. A batch nests these (:meth:`EtcdBackend.update_many`).
        """
        parsed = _parse_version(expected_version) if isinstance(expected_version, str) else None
        if parsed is None:
            return None
        strict, lock_mod, fence_mod, fence = parsed
        if strict or lock_mod == 0 or int(record.transitions) != fence:
            return None
        return self._txn(record, lock_mod, fence_mod, fence)

    def renew_batch(self) -> "EtcdBackend":
        return self._backend

    def _write(self, record: LeaderRecord, lock_mod: int, fence_mod: int, fence: int, timeout: float, why: str) -> str:
        body = self._txn(record, lock_mod, fence_mod, fence)
        reply = self._backend.call("kv/txn", body, timeout, idempotent=False)
        if not reply.get("succeeded"):
            raise Conflict(f"{self.name}: {why}")
        try:
            revision = int(reply["header"]["revision"])
        except (KeyError, TypeError, ValueError):
            raise BackendUnavailable(f"{self.describe()}: etcd answered a write without a revision") from None
        if self._watch is not None:
            self._drop_watch()  # a writer leads and does not wait: its watch would only fill up
        # both puts of one transaction get the transaction's revision
        return f"{revision}:{revision}:{fence}"

    # --- watching ---------------------------------------------------------------------

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        self._wait_changed(version, timeout)

    def wait_for_change_hinted(self, version: str | None, timeout: float) -> Versioned | None:
        """The watch event carries the lock key's value: a standby following a renewing
        leader need not read both keys again after every renewal. The hint's version
        assumes the fence key was written in the same transaction, as every write of this
        backend does; a key written by hand makes it wrong, which costs the takeover's
        compare-and-swap a Conflict and a read, never a second leader."""
        return self._wait_changed(version, timeout)

    def _wait_changed(self, version: str | None, timeout: float) -> Versioned | None:
        """Return when the lock key changes from ``version``, or after ``timeout``.

        One watch on the lock key is kept open across waits (a standby used to read and open
        a new watch stream per wait, that is per renewal of the leader). A kept watch that
        started no later than the revision after ``version``'s lock revision has delivered,
        or will deliver, every later change of the key, so the wait needs no read: an event
        newer than that revision ends it. Otherwise (no watch yet, it broke, it started
        later, the preferred member changed, a version of another form): read, and if
        unchanged open a new watch from the read's revision + 1 and keep it.

        Returns the lock as the change showed it when it did (the last event's value, or
        the read), else ``None``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:
            return None
        if not self._watch_guard.acquire(blocking=False):
            # another thread waits on this lock's kept watch: a watch of its own
            self._wait_once(version, deadline)
            return None
        try:
            parsed = _parse_version(version) if version else None
            watch = self._kept_watch()
            if watch is not None and parsed is not None and parsed[1] > 0 and self._watch_start <= parsed[1] + 1:
                self.kept_watch_waits += 1
                try:
                    return self._until_event(watch, parsed[1], deadline)
                except BackendUnavailable:
                    self._drop_watch()  # read and watch anew below
            state = self._read(max(0.0, deadline - time.monotonic()))
            current = self._versioned(state)
            if self._closed:
                return None
            if (current.version if current else None) != version:
                return current  # changed before any watch: the read is the hint
            self._drop_watch()
            body = {"create_request": {"key": _b64(self.key), "start_revision": str(state.revision + 1)}}
            watch = self._backend.open_stream("watch", body, deadline)
            self.watches_opened += 1
            with self._guard:
                self._watch, self._watch_start = watch, state.revision + 1
            if self._closed:
                self._drop_watch()
                return None
            return self._until_event(watch, state.lock_mod, deadline)
        except BackendUnavailable:
            self._drop_watch()
            if self._closed:
                return None  # close() aborted the watch
            raise
        finally:
            self._watch_guard.release()

    def _kept_watch(self) -> _Stream | None:
        watch = self._watch
        if watch is None:
            return None
        if watch.pid != os.getpid():
            self._watch = None  # a forked child: the parent's socket, never touched here
            return None
        endpoints = self._backend.endpoints
        if watch.broken or endpoints[self._backend._preferred % len(endpoints)] != watch.endpoint:
            self._drop_watch()  # later calls go to another member: watch there
            return None
        return watch

    def _until_event(self, watch: _Stream, seen: int, deadline: float) -> Versioned | None:
        """Read the kept watch until an event newer than revision ``seen`` or the deadline;
        the hint of the message's last event (its newest state: later messages are read by
        the next wait), or ``None``."""
        while True:
            line = watch.next(deadline)
            if line is None:
                return None  # the deadline: no change, the watch stays
            result = line.get("result") or {}
            if result.get("canceled") or line.get("error"):
                # refused or ended (compacted, permission): re-read, and watch anew next time
                if result.get("cancel_reason"):
                    log.debug("%s: watch canceled: %s", self.name, result.get("cancel_reason"))
                self._drop_watch()
                return None
            events: Any = result.get("events") or []
            if not isinstance(events, list):
                return None  # garbage: a change we cannot place (the caller reads)
            for event in events:
                try:
                    revision = int((event.get("kv") or {}).get("mod_revision") or 0)
                except (TypeError, ValueError, AttributeError):
                    revision = 0
                if revision == 0 or revision > seen:
                    # a change after the version the caller knows (or one we cannot place)
                    return _hint(events[-1])
            if self._closed:
                return None

    def _wait_once(self, version: str | None, deadline: float) -> None:
        """Read; if unchanged, watch the lock key on a stream of this wait's own until a change or the deadline."""
        state = self._read(max(0.0, deadline - time.monotonic()))
        current = self._versioned(state)
        if (current.version if current else None) != version or self._closed:
            return
        body = {"create_request": {"key": _b64(self.key), "start_revision": str(state.revision + 1)}}
        watch = self._backend.open_stream("watch", body, deadline)
        with self._guard:
            self._streams.add(watch)
        try:
            while not self._closed:  # (close() may have come before the stream was registered)
                line = watch.next(deadline)
                if line is None or self._closed:
                    return
                result = line.get("result") or {}
                if result.get("events") or result.get("canceled") or line.get("error"):
                    return
        except BackendUnavailable:
            if self._closed:
                return
            raise
        finally:
            with self._guard:
                self._streams.discard(watch)
            watch.close()

    def _drop_watch(self) -> None:
        with self._guard:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def close(self) -> None:
        self._closed = True
        with self._guard:
            streams, self._streams = list(self._streams), set()
            watch, self._watch = self._watch, None
        for stream in streams + ([watch] if watch is not None else []):
            stream.close()

    def describe(self) -> str:
        return f"etcd key {self.key!r} at {self._backend.describe()}"


def _hint(event: Any) -> Versioned | None:
    """The lock as a watch event shows it: a put of a readable record, versioned as this
    backend's writes are (both keys in one transaction, the fence at the record's token);
    ``None`` for a deletion or anything else."""
    try:
        if event.get("type", "PUT") != "PUT":
            return None
        kv = event["kv"]
        revision = int(kv["mod_revision"])
        raw = _unb64(kv.get("value", ""))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    record = fenced_record(raw, 0, VANISHED_HOLDER)
    if record.decode_error or revision <= 0 or record.transitions <= 0:
        return None
    return Versioned(record, f"{revision}:{revision}:{record.transitions}")


def _abort(conn: http.client.HTTPConnection) -> None:
    """Wake a thread reading from ``conn`` (it sees the end of the stream and closes it itself)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Stream:
    """The messages of one streaming answer (a watch), read only when asked for.

    Between reads the connection stays open and what the member sends waits in the socket,
    so a standby can keep one watch across its waits instead of opening one per wait.
    :meth:`next` blocks on the socket itself (``poll``) and reads only what has arrived
    (the chunked framing is taken apart here: ``http.client``'s own reader blocks for the
    next chunk's header right after a chunk), so a deadline that passes while nothing came
    leaves the stream intact for the next call.
    """

    def __init__(self, backend: "EtcdBackend", endpoint: _Endpoint, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:  # fmt: skip
        self.backend = backend
        self.endpoint = endpoint
        self.conn = conn
        self._fp = resp.fp  # the socket's buffered reader, at the start of the body
        self._chunked = bool(resp.chunked)
        #: bytes of the answer not yet taken apart, and what is left of the current chunk
        #: (None: its size line comes next; 0: the CRLF after its data)
        self._raw = b""
        self._chunk_left: int | None = None
        self._buffer = b""
        self._decoder = json.JSONDecoder()
        self.broken = False
        self.pid = os.getpid()

    def _waiting(self) -> bool:
        """Has the buffered reader or TLS already taken in bytes not yet handed out?"""
        sock = self.conn.sock
        if sock is None or self._fp is None:
            return True  # closed under us: the read says so
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        sock.settimeout(0.0)  # peek at the buffered reader without blocking on the socket
        try:
            return bool(self._fp.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except Exception:  # noqa: BLE001 - closed meanwhile (by close() in another thread): the read reports it
            return True

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next message; ``None`` once ``deadline`` passes with none complete. Raises
        :class:`BackendUnavailable` when the stream ended or failed (and closes it)."""
        while True:
            message = self._decode()
            if message is not None:
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._waiting():
                sock = self.conn.sock
                if sock is None or not _readable(sock.fileno(), left):
                    continue  # the deadline (checked above), or closed: the read reports it
            try:
                # bytes have arrived: this read returns them without waiting for more
                self.backend._settimeout(self.conn, max(deadline, time.monotonic() + 0.05))
                data = self._fp.read1(65536)
                ended = not data or self._take(data)
            except Exception as exc:  # noqa: BLE001 - OSError; ValueError for a bad chunk;
                # AttributeError when close() in another thread closed it meanwhile
                self.close()
                raise _Unavailable(f"etcd watch on {self.endpoint} failed: {exc!r}") from None
            if ended:
                self.close()
                raise _Unavailable(f"etcd member {self.endpoint} ended the watch stream")
            if len(self._buffer) > MAX_RESPONSE or len(self._raw) > MAX_RESPONSE:
                self.close()
                return {"error": "watch message too large"}

    def _take(self, data: bytes) -> bool:
        """Add bytes read from the socket to the body; ``True`` at the end of the body."""
        if not self._chunked:
            self._buffer += data
            return False
        self._raw += data
        while self._raw:
            if self._chunk_left is None:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    if len(self._raw) > 1024:
                        raise ValueError("chunk size line too long")
                    return False
                size = int(self._raw[:end].split(b";", 1)[0].strip(), 16)
                self._raw = self._raw[end + 2 :]
                if size == 0:
                    return True  # the last chunk
                self._chunk_left = size
            elif self._chunk_left == 0:
                if len(self._raw) < 2:
                    return False
                if self._raw[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                self._raw = self._raw[2:]
                self._chunk_left = None
            else:
                part = self._raw[: self._chunk_left]
                self._buffer += part
                self._raw = self._raw[len(part) :]
                self._chunk_left -= len(part)
        return False

    def _decode(self) -> dict[str, Any] | None:
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = b""
                return None
            try:
                decoded = text.decode("utf-8")
                message, end = self._decoder.raw_decode(decoded)
            except (ValueError, UnicodeDecodeError):
                self._buffer = text
                return None  # incomplete: read more
            self._buffer = decoded[end:].encode("utf-8")
            if isinstance(message, dict):
                return message

    def close(self) -> None:
        self.broken = True
        if self.pid == os.getpid():
            _abort(self.conn)
            self.conn.close()


def _readable(fd: int, timeout: float) -> bool:
    """Block until ``fd`` is readable (data, end of stream or an error) or ``timeout`` passes."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(0.0, timeout) * 1000.0))
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(readable)


class EtcdBackend(Backend, RenewBatch):
    """An etcd v3 cluster (one or more members listed in the URL); one set of connections for all locks.

    Its locks renew in batches (:meth:`update_many`: one transaction of nested ones).

    URL options: ``tls`` (``true`` for https; implied by the file options), ``cacert``
    (CA bundle that signed the members' certificates), ``cert`` and ``key`` (client
    certificate), ``connect_timeout`` (seconds, cap for one connect, default 1).
    User and password come from the URL's user information and are never shown.
    """

    schemes = ("etcd",)
    capabilities = CAPABILITIES

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        *,
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        url: str | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigurationError("no etcd endpoints; write etcd://host:2379[,host2:2379]/PREFIX")
        if (username is None) != (password is None):
            raise ConfigurationError("give both the etcd user and the password (etcd://USER:PASSWORD@host:2379/), or neither")
        prefix = base_path(prefix, DEFAULT_PREFIX)
        self.endpoints = [_Endpoint(h, p) for h, p in endpoints]
        self.prefix = prefix
        self._username = username
        self._password = password
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.url = url or self._default_url()
        self._preferred = 0
        self._token: str | None = None
        self._auth_disabled = False
        self._auth_guard = threading.Lock()
        self._idle: dict[_Endpoint, collections.deque[tuple[http.client.HTTPConnection, float]]] = {
            e: collections.deque() for e in self.endpoints
        }
        self._idle_guard = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._locks: weakref.WeakSet[EtcdLock] = weakref.WeakSet()
        self._txn_renewals = TXN_RENEWALS
        self._txn_bytes = TXN_BYTES

    def _default_url(self) -> str:
        user = f"{self._username}:***@" if self._username else ""
        return f"etcd://{user}{','.join(str(e) for e in self.endpoints)}{self.prefix}"

    # --- construction -----------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str) -> "EtcdBackend":
        parts, shown, options = split_url(url, scheme="etcd", service="etcd", known=OPTIONS)
        username, password, endpoints = users_and_hosts(
            parts, shown, service="etcd", default_port=DEFAULT_PORT, member="host", path_word="PREFIX"
        )
        cacert = options.text("cacert")
        cert = options.text("cert")
        key = options.text("key")
        use_tls = options.flag("tls", bool(cacert or cert))
        connect_timeout = options.seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=0.01, maximum=60.0)
        if (cert is None) != (key is None):
            raise ConfigurationError("give both ?cert= and ?key= for a client certificate, or neither")
        if (cacert or cert) and not use_tls:
            raise ConfigurationError("?cacert=/?cert= need TLS; drop ?tls=false")
        context = _tls_context(cacert, cert, key) if use_tls else None
        return cls(
            endpoints,
            prefix=unquote(parts.path),
            username=username,
            password=password,
            tls=context,
            connect_timeout=float(connect_timeout or DEFAULT_CONNECT_TIMEOUT),
            url=url,
        )

    def lock(self, name: str) -> EtcdLock:
        if self._closed:
            raise ConfigurationError("this etcd backend is closed")
        lock = EtcdLock(self, name)
        self._locks.add(lock)
        return lock

    def describe(self) -> str:
        return redact(self.url)

    # --- start-up check ---------------------------------------------------------------

    def check(self, timeout: float = 5.0) -> None:
        """Reachable, etcd >= 3.4, credentials accepted, read and write permitted on the prefix."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.001, deadline - time.monotonic())

        try:
            version = self.call("version", None, left(), idempotent=True, method="GET", auth=False)
        except BackendUnavailable as exc:
            hint = self._protocol_mismatch(left())
            if hint:
                raise ConfigurationError(hint) from None
            raise exc from None
        server = str(version.get("etcdserver", ""))
        try:
            numbers = tuple(int(p) for p in server.split(".")[:2])
        except ValueError:
            numbers = ()
        if len(numbers) != 2:
            raise ConfigurationError(f"{self.describe()} does not look like etcd (GET /version said {version!r})")
        if numbers < (3, 4):
            raise ConfigurationError(
                f"etcd at {self.describe()} is version {server}; this backend needs etcd >= 3.4 (its /v3 JSON gateway)"
            )
        probe = f"{self.prefix}/lock/.celery-leader-probe"
        self.call("kv/range", {"key": _b64(probe)}, left(), idempotent=True)
        # a write that cannot succeed (no key has mod_revision -1) is still permission-checked
        self.call(
            "kv/txn",
            {
                "compare": [{"key": _b64(probe), "target": "MOD", "mod_revision": "-1", "result": "EQUAL"}],
                "success": [{"request_put": {"key": _b64(probe), "value": ""}}],
            },
            left(),
            idempotent=True,
        )

    # --- batched renewals -------------------------------------------------------------

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        """Plain renewals in one ``kv/txn`` per :data:`TXN_RENEWALS` items (or
        :data:`TXN_BYTES` of request), each a nested
        transaction (etcd >= 3.3) that is exactly :meth:`EtcdLock.update`'s: its own lock and
        fence keys compared with the revisions its version names, both put.

        The outer transaction has no condition: every nested one is decided on its own and
        its ``succeeded`` is that item's outcome (a key that moved on is that item's
        :class:`Conflict`, never another's); every put of the transaction gets its revision,
        so each landed item's new version is ``<revision>:<revision>:<fence>`` as for a lone
        write. Anything else (a new term, a key read as garbage or absent, a version that is
        not ours, a second item for a key already in the transaction) goes through its
        lock's own :meth:`~EtcdLock.update` afterwards, in the time left. A transaction that
        fails as a whole (member gone, no answer in time) is the outcome of each item in it.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        todo = sort_items(
            items,
            self.describe(),
            lambda lock: isinstance(lock, EtcdLock) and lock._backend is self,
            lambda lock, item: lock._renewal(item[1], item[2]) if isinstance(lock, EtcdLock) else None,
            lambda lock: lock.key if isinstance(lock, EtcdLock) else lock.name,  # two puts of one key: etcd refuses it
        )
        out = todo.out
        batched: list[tuple[int, dict[str, Any], int, int]] = []  # (index, nested txn, fence, request bytes)
        for i, txn in todo.batched:
            size = 200 + sum(len(op["request_put"]["key"]) + len(op["request_put"]["value"]) for op in txn["success"])
            batched.append((i, txn, int(items[i][1].transitions), size + 2 * len(txn["compare"][0]["key"])))
        while batched:
            # as many as one transaction may carry, by count and by bytes (at least one)
            count, request = 1, batched[0][3]
            while count < min(len(batched), self._txn_renewals) and request + batched[count][3] <= self._txn_bytes:
                request += batched[count][3]
                count += 1
            chunk, rest = batched[:count], batched[count:]
            try:
                reply = self.call(
                    "kv/txn", {"success": [{"request_txn": txn} for _, txn, _, _ in chunk]}, deadline - time.monotonic(), idempotent=False
                )
            except (BackendUnavailable, ConfigurationError) as exc:
                # refused before anything was applied: this member has lower limits than ours
                if "too many operations" in str(exc) and count > 1:
                    self._txn_renewals = max(1, count // 2)
                    log.info("%s refused %d nested renewals in one transaction; sending %d", self.describe(), count, self._txn_renewals)
                    continue
                if ("too large" in str(exc) or "larger than max" in str(exc)) and count > 1:
                    self._txn_bytes = max(1, request // 2)
                    log.info("%s refused a %d-byte transaction of renewals; sending at most %d", self.describe(), request, self._txn_bytes)
                    continue
                for i, _, _, _ in chunk:
                    out[i] = exc  # nothing is known about any item of this transaction
            else:
                for (i, _, fence, _), outcome in zip(chunk, self._nested_outcomes(reply, len(chunk))):
                    lock = items[i][0]
                    if outcome is None:
                        out[i] = Conflict(f"{lock.name}: the stored version moved on")
                    elif isinstance(outcome, Exception):
                        out[i] = outcome
                    else:
                        out[i] = f"{outcome}:{outcome}:{fence}"
                        if isinstance(lock, EtcdLock) and lock._watch is not None:
                            lock._drop_watch()  # it leads (as after a lone write): no waiting
            batched = rest
        return send_alone(items, todo, deadline)

    def _nested_outcomes(self, reply: dict[str, Any], n: int) -> list[int | None | Exception]:
        """Per nested transaction: the revision it wrote at, ``None`` if its compare failed,
        or the error when the answer cannot be read (then the write may have landed)."""
        try:
            revision = int(reply["header"]["revision"])
            responses = reply.get("responses") or []
            if len(responses) != n:
                raise ValueError(f"{len(responses)} answers to {n} transactions")
            # proto3 JSON leaves out false: a missing "succeeded" is a compare that failed
            return [revision if bool((r.get("response_txn") or {}).get("succeeded")) else None for r in responses]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            error = BackendUnavailable(f"etcd at {self.describe()}: unexpected answer to a batch of renewals ({exc!r})")
            return [error] * n

    def _protocol_mismatch(self, timeout: float) -> str | None:
        """Why a member did not answer, if it speaks TLS and we do not, or the other way round."""
        for endpoint in self.endpoints:
            try:
                with socket.create_connection((endpoint.host, endpoint.port), timeout=min(timeout, self.connect_timeout)) as raw:
                    raw.settimeout(min(timeout, 2.0))
                    if self._tls is None:
                        probe = ssl.create_default_context()
                        probe.check_hostname = False
                        probe.verify_mode = ssl.CERT_NONE
                        try:
                            probe.wrap_socket(raw, server_hostname=endpoint.host).close()
                        except ssl.SSLError as exc:
                            if "CERTIFICATE_REQUIRED" not in str(exc) and "certificate required" not in str(exc):
                                continue
                        return f"etcd at {self.describe()} speaks TLS; add ?tls=true (and ?cacert=/path/ca.pem) to the URL"
                    raw.sendall(b"GET /version HTTP/1.0\r\nHost: etcd\r\n\r\n")
                    answer = raw.recv(4096)
                    if answer.startswith(b"HTTP/") and b"etcdserver" in answer:
                        return f"etcd at {self.describe()} does not speak TLS; drop ?tls=true and the TLS file options"
            except OSError:
                continue
        return None

    # --- calls ------------------------------------------------------------------------

    def call(
        self,
        path: str,
        body: Any,
        timeout: float,
        *,
        idempotent: bool,
        method: str = "POST",
        auth: bool = True,
    ) -> dict[str, Any]:
        """One request to the cluster within ``timeout``; errors mapped to the contract's.

        Members are tried from the preferred one; a member that cannot be connected to is
        skipped at once; one that does not answer makes the call fail and the next call go
        to the next member (a write is never sent twice within one call).
        """
        if self._closed:
            raise BackendUnavailable(f"{self.describe()} is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        reauthenticated = False
        while True:
            headers = {"Content-Type": "application/json"}
            if auth:
                token = self._auth_token(deadline)
                if token:
                    headers["Authorization"] = token
            data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
            status, reply = self._send(method, path if path == "version" else "v3/" + path, data, headers, deadline, idempotent)
            if status == 200:
                if not isinstance(reply, dict):
                    raise BackendUnavailable(f"etcd at {self.describe()} answered {path} with {type(reply).__name__}")
                return reply
            message = str(reply.get("message") or reply.get("error") or "") if isinstance(reply, dict) else ""
            if "invalid auth token" in message and auth and self._username and not reauthenticated:
                # simple tokens expire (--auth-token-ttl) and die with a member restart
                with self._auth_guard:
                    self._token = None
                reauthenticated = True
                continue
            raise self._error(path, status, reply, message)

    def _error(self, path: str, status: int, reply: Any, message: str) -> Exception:
        code = reply.get("code") if isinstance(reply, dict) else None
        where = f"etcd at {self.describe()}"
        if "user name is empty" in message:
            return ConfigurationError(
                f"{where} has authentication enabled; put the credentials in the URL: "
                "etcd://USER:PASSWORD@host:2379/PREFIX"
            )
        if "authentication failed" in message or "invalid user ID or password" in message:
            return ConfigurationError(f"{where} refused the user name or password; fix them in the URL")
        if code == 7 or "permission denied" in message:
            return ConfigurationError(
                f"{where}: permission denied for {path} under {self.prefix!r}; " + _GRANTS.format(prefix=self.prefix)
            )
        if status == 404:
            return ConfigurationError(
                f"{where} has no /v3/{path} endpoint (HTTP 404); is it etcd >= 3.4 with its client URL, not the peer URL?"
            )
        if status == 400 and "HTTP request to an HTTPS server" in str(reply):
            return ConfigurationError(f"{where} speaks TLS; add ?tls=true (and ?cacert=/path/ca.pem) to the URL")
        if code in (14, 4, 8, 10, 13) or status >= 500 or "no leader" in message or "timed out" in message:
            return BackendUnavailable(f"{where}: {message or status}")
        if code == 3 and path == "kv/txn" and "too large" in message:
            return ConfigurationError(f"{where}: {message}")
        return BackendUnavailable(f"{where} answered {path} with HTTP {status}: {message or _short(reply)}")

    def _auth_token(self, deadline: float) -> str | None:
        if not self._username or self._auth_disabled:
            return None
        with self._auth_guard:
            if self._token is not None:
                return self._token
        status, reply = self._send(
            "POST",
            "v3/auth/authenticate",
            json.dumps({"name": self._username, "password": self._password}).encode(),
            {"Content-Type": "application/json"},
            deadline,
            True,
        )
        message = str(reply.get("message") or reply.get("error") or "") if isinstance(reply, dict) else ""
        if status == 200 and isinstance(reply, dict) and reply.get("token"):
            with self._auth_guard:
                self._token = str(reply["token"])
                return self._token
        if "authentication is not enabled" in message:
            log.warning("etcd at %s does not have authentication enabled; the URL's credentials are not used", self.describe())
            self._auth_disabled = True
            return None
        raise self._error("auth/authenticate", status, reply, message)

    def _send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], deadline: float, idempotent: bool
    ) -> tuple[int, Any]:
        n = len(self.endpoints)
        first = self._preferred
        last_error: BackendUnavailable | None = None
        for i in range(n):
            endpoint = self.endpoints[(first + i) % n]
            if deadline - time.monotonic() <= 0:
                break
            try:
                return self._exchange(endpoint, method, path, data, headers, deadline, idempotent)
            except _NotSent as exc:
                last_error = exc
                self._rotate(endpoint)
                continue
            except _Unavailable:
                self._rotate(endpoint)
                raise
        if last_error is not None:
            raise BackendUnavailable(str(last_error)) from None
        raise BackendUnavailable(f"no time left to call etcd at {self.describe()}")

    def _rotate(self, failed: _Endpoint) -> None:
        """Later calls start at the member after ``failed`` (if it is still the preferred one)."""
        n = len(self.endpoints)
        if n > 1 and self.endpoints[self._preferred % n] == failed:
            self._preferred = (self._preferred + 1) % n
            log.debug("etcd: %s failed; next calls go to %s", failed, self.endpoints[self._preferred])

    def _exchange(
        self,
        endpoint: _Endpoint,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        deadline: float,
        idempotent: bool,
    ) -> tuple[int, Any]:
        conn, reused = self._checkout(endpoint, deadline, for_write=not idempotent)
        try:
            try:
                return self._roundtrip(conn, method, path, data, headers, deadline, endpoint)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not (reused and idempotent) or deadline - time.monotonic() <= 0:
                    raise
            # a pooled connection the member had closed: once more on a new one (reads only)
            conn.close()
            conn = self._connect(endpoint, deadline)
            return self._roundtrip(conn, method, path, data, headers, deadline, endpoint)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            raise _Unavailable(f"etcd member {endpoint} closed the connection: {exc}") from None
        except TimeoutError:
            raise _Unavailable(f"etcd member {endpoint} did not answer in time") from None
        except ssl.SSLError as exc:
            raise self._tls_error(exc) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # (http.client raises ValueError on a chunked answer cut in the middle)
            raise _Unavailable(f"etcd member {endpoint}: {exc!r}") from None
        finally:
            self._checkin(endpoint, conn, healthy=bool(getattr(conn, "_celery_leader_ok", False)))

    def _roundtrip(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        deadline: float,
        endpoint: _Endpoint,
    ) -> tuple[int, Any]:
        conn._celery_leader_ok = False  # type: ignore[attr-defined]
        self._settimeout(conn, deadline)
        conn.request(method, "/" + path, body=data, headers=headers)
        self._settimeout(conn, deadline)
        resp = conn.getresponse()
        self._settimeout(conn, deadline)
        raw = resp.read(MAX_RESPONSE + 1)
        if len(raw) > MAX_RESPONSE:
            raise _Unavailable(f"etcd member {endpoint} sent an answer over {MAX_RESPONSE} bytes")
        conn._celery_leader_ok = not resp.will_close  # type: ignore[attr-defined]
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"error": raw[:200].decode("utf-8", "replace")}
        return resp.status, reply

    def _settimeout(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        conn.timeout = left
        if conn.sock is not None:
            conn.sock.settimeout(left)

    def _tls_error(self, exc: ssl.SSLError) -> Exception:
        text = str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            return ConfigurationError(
                f"the TLS certificate of etcd at {self.describe()} is not trusted ({exc.reason or text}); "
                "give the CA that signed it: ?cacert=/path/to/ca.pem"
            )
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return ConfigurationError(f"etcd at {self.describe()} does not speak TLS; drop ?tls=true and the file options")
        if "CERTIFICATE_REQUIRED" in text or "certificate required" in text or "BAD_CERTIFICATE" in text:
            return ConfigurationError(
                f"etcd at {self.describe()} wants a client certificate; give ?cert=/path/client.pem&key=/path/client-key.pem"
            )
        return _Unavailable(f"TLS with etcd at {self.describe()} failed: {text}")

    # --- connections ------------------------------------------------------------------

    def _new_connection(self, endpoint: _Endpoint, timeout: float) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout, context=self._tls)
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)

    def _connect(self, endpoint: _Endpoint, deadline: float) -> http.client.HTTPConnection:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _NotSent(f"no time left to connect to etcd member {endpoint}")
        conn = self._new_connection(endpoint, min(left, self.connect_timeout))
        try:
            conn.connect()
        except ssl.SSLError as exc:
            conn.close()
            raise self._tls_error(exc) from None
        except (TimeoutError, OSError) as exc:
            conn.close()
            raise _NotSent(f"cannot connect to etcd member {endpoint}: {exc}") from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _checkout(self, endpoint: _Endpoint, deadline: float, *, for_write: bool) -> tuple[http.client.HTTPConnection, bool]:
        """A pooled connection (for a write, not one idle for long: it is never resent), or a new one."""
        if self._pid != os.getpid():
            self._after_fork()
        now = time.monotonic()
        with self._idle_guard:
            idle = self._idle[endpoint]
            while idle:
                conn, since = idle.pop()
                if not for_write or now - since < MAX_IDLE:
                    return conn, True
                conn.close()
        return self._connect(endpoint, deadline), False

    def _checkin(self, endpoint: _Endpoint, conn: http.client.HTTPConnection, *, healthy: bool) -> None:
        if healthy and not self._closed and self._pid == os.getpid():
            with self._idle_guard:
                self._idle[endpoint].append((conn, time.monotonic()))
                return
        conn.close()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's sockets (never use or close them)."""
        with self._idle_guard:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._idle = {e: collections.deque() for e in self.endpoints}

    def open_stream(self, path: str, body: Any, deadline: float) -> "_Stream":
        """Start a streaming request (a watch) on its own connection to the preferred member.

        A member that cannot be reached, or that refuses the request, raises
        :class:`BackendUnavailable` (or the error its answer means).
        """
        headers = {"Content-Type": "application/json"}
        token = self._auth_token(deadline)
        if token:
            headers["Authorization"] = token
        endpoint = self.endpoints[self._preferred % len(self.endpoints)]
        try:
            conn = self._connect(endpoint, deadline)
        except _NotSent:
            self._rotate(endpoint)
            raise
        try:
            self._settimeout(conn, deadline)
            conn.request("POST", "/v3/" + path, body=json.dumps(body).encode(), headers=headers)
            self._settimeout(conn, deadline)
            resp = conn.getresponse()
            if resp.status != 200:
                raw = resp.read(MAX_RESPONSE)
                try:
                    reply = json.loads(raw)
                except ValueError:
                    reply = {}
                message = str(reply.get("message") or "") if isinstance(reply, dict) else ""
                raise self._error(path, resp.status, reply, message)
        except ssl.SSLError as exc:
            conn.close()
            raise self._tls_error(exc) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            conn.close()
            self._rotate(endpoint)
            raise _Unavailable(f"etcd watch on {endpoint} failed: {exc!r}") from None
        except BaseException:
            conn.close()
            raise
        return _Stream(self, endpoint, conn, resp)

    # --- housekeeping -----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lock in list(self._locks):
            lock.close()
        with self._idle_guard:
            pools, self._idle = self._idle, {e: collections.deque() for e in self.endpoints}
        if self._pid != os.getpid():
            return  # the parent's sockets: not ours to close
        for idle in pools.values():
            for conn, _ in idle:
                conn.close()


def _short(reply: Any) -> str:
    text = json.dumps(reply) if not isinstance(reply, str) else reply
    return text if len(text) <= 200 else text[:200] + "..."


def _tls_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cacert)
        if cert and key:
            context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"TLS file not found: {exc.filename}; fix ?cacert=, ?cert= or ?key=") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the TLS files given in ?cacert=/?cert=/?key= ({exc})") from None
    return context
