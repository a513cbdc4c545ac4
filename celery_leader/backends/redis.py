"""``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``: leases in Redis.

Layout, under a key prefix (``?prefix=``, default ``celery-leader:``):

``<prefix>lock:<name>``
    a string: the record as the Go seed's JSON plus ``"celeryLeaderSeq"`` (a per-write
    counter the server splices in, so that every write has new bytes). Its expiry is only
    garbage collection: ``2 * lease + gc_margin`` (default margin 60 s), far past any lease.
``<prefix>fence:<name>``
    a hash without expiry: ``transitions`` (the highest fencing token ever written) and
    ``writes`` (the write counter). It survives deletion, expiry and eviction of the lock
    key, so tokens never go backwards (see docs/redis.md).
``<prefix>changes``
    the pub/sub channel: every successful write publishes ``"<version> <name>"``.

The version is the SHA-1 of the stored bytes, computed by Redis: any change, ours or a
foreign writer's (a Go candidate, a hand edit), gives a new version. A lock key that has
vanished while its fence remains reads as a free record carrying the last token, with the
version ``absent:<token>``; writing against that version recreates the key.

Every compare-and-swap is one Lua script (atomic on the server). Per-call timeouts are
honoured by setting the socket timeouts of the connection before each call, so this module
manages its own idle connections instead of redis-py's pool checkout.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AuthenticationError,
        MasterDownError,
        NoPermissionError,
        NoScriptError,
        ReadOnlyError,
        RedisError,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
    from redis.sentinel import Sentinel, SentinelConnectionPool
except ImportError as exc:  # pragma: no cover - registry turns this into the pip hint
    raise ImportError(exc.msg, name="redis") from exc

try:  # redis-py's own C helper (``redis[hiredis]``, in our extra): optional
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis-py's pure-Python packer then
    _hiredis_pack = None  # type: ignore[assignment]
try:  # redis-py's hiredis reply parser, read directly in batches (see RedisBackend._replies)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _HiredisParser
except ImportError:  # pragma: no cover - without hiredis, or another redis-py layout: read_response
    _HiredisParser = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = object()

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
from ..record import MAX_RECORD_BYTES, LeaderRecord, canonical_json, decode_or_placeholder, encode_record, printable
from ..urls import UrlOptions, redact, scrub
from .notify import ChangeNotifier

__all__ = ["RedisBackend", "RedisLock", "SentinelRedisLock", "VANISHED_HOLDER"]

log = logging.getLogger(__name__)

#: one primary: every acknowledged write is seen by every later read; a partition can only
#: make it unreachable, never let two sides write.
CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True, batch=True)
#: Sentinel: replication is asynchronous, a failover can lose acknowledged writes, and an
#: isolated old primary keeps accepting writes until it notices.
SENTINEL_CAPABILITIES = Capabilities(linearizable=False, watch=True, partition_safe=False, batch=True)

DEFAULT_PREFIX = "celery-leader:"
DEFAULT_GC_MARGIN = 60.0
DEFAULT_MAX_CONNECTIONS = 16
#: connections reserved for batched renewals (``update_many``), on top of ``max_connections``:
#: as many as the asyncio renewal scheduler keeps in flight, so that a crowd of one-off
#: calls (reads and acquisitions after lost terms) never makes the renewals of steady
#: leaders wait for a connection, nor the other way round
BATCH_CONNECTIONS = 4
SEQ_KEY = "celeryLeaderSeq"
#: the commands the scripts and the notifier run (for ACL messages)
ACL_COMMANDS = "+eval +evalsha +script|load +ping +type +get +getrange +strlen +set +del +hget +hmget +hset +hdel +hincrby +publish +subscribe"

# KEYS: a scratch key and a fence under the prefix. The start-up check: every command the
# scripts run, on keys under the prefix, is allowed (ACL key patterns and command rules).
PROBE_SCRIPT = """
redis.call('SET', KEYS[1], '1', 'PX', 10000)
redis.call('HMGET', KEYS[2], 'transitions', 'writes')
redis.call('DEL', KEYS[1])
return 1
"""
ABSENT = "absent:"
#: the holder a vanished lock key reads as (its fence remains): nobody's identity
VANISHED_HOLDER = "(lock key vanished)"

#: query options this module reads itself (the rest go to redis-py)
OWN_OPTIONS = {"prefix", "gc_margin", "max_connections", "sentinel_password", "sentinel_username", "master", "service_name", "ssl"}
#: query options passed on to redis-py (anything else is a typo: refused)
REDIS_OPTIONS = {
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "client_name",
    "health_check_interval",
    "protocol",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_check_hostname",
    "ssl_min_version",
}

# The server's own clock: TIME (ms) and this server process's run_id (a restart or a
# failed-over replica has another one, and then nothing is concluded from time). Best
# effort: an ACL user without TIME or INFO still works, only without the cold-start
# shortcut (now_ms stays '' and nothing is concluded from time).
CLOCK_LUA = """
local now_ms = ''
local run_id = ''
local clock = redis.pcall('TIME')
local info = redis.pcall('INFO', 'server')
if type(clock) == 'table' and clock[1] and type(info) == 'string' then
  now_ms = tostring(tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
  run_id = string.match(info, 'run_id:(%x+)') or ''
end
"""

# KEYS: lock, fence. ARGV: the largest record size. Returns {raw or false, fence
# transitions or false, the server time of the last write (ms), its lease (ms), the
# version it wrote, the run_id that wrote it, the server time now (ms), the run_id now,
# false or (for a value above the size) the SHA-1 of the whole value, raw being its start}.
READ_SCRIPT = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE celery-leader lock key holds a ' .. t)
end
local raw = false
local digest = false
if t == 'string' then
  if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
    -- not a record: send only what proves it, and the version of the whole value
    raw = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[1]))
    digest = redis.sha1hex(redis.call('GET', KEYS[1]))
  else
    raw = redis.call('GET', KEYS[1])
  end
end
""" + CLOCK_LUA + """
local f = redis.call('HMGET', KEYS[2], 'transitions', 'written_ms', 'lease_ms', 'written_version', 'server', 'extra')
return {raw, f[1], f[2], f[3], f[4], f[5], now_ms, run_id, digest, f[6]}
"""

# KEYS: lock, fence. ARGV: expected version ('' = create; 'g:<sha1>' = over undecodable
# content; 'absent:<n>' = over a vanished key), record JSON, its transitions,
# expiry in ms, channel, name, lease in ms. Returns {1, version[, PUBLISH error]} | {0, current version}
# (conflict) | {-1, fence} (the token would not be above the fence). Each write records
# the server's clock, the lease and the version written with the fence (cold start).
WRITE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE celery-leader lock key holds a ' .. t)
end
local fence_raw = redis.call('HGET', KEYS[2], 'transitions')
local fence = tonumber(fence_raw)
if fence_raw and not fence then
  return redis.error_reply('BADFENCE celery-leader fence field transitions is not a number')
end
local current = ''
if t == 'string' then
  current = redis.sha1hex(redis.call('GET', KEYS[1]))
elseif fence then
  current = 'absent:' .. fence
end
local expected = ARGV[1]
local strict = t == 'none'
if string.sub(expected, 1, 2) == 'g:' then
  -- the writer read something undecodable: it cannot know the last token, so demand more
  expected = string.sub(expected, 3)
  strict = true
end
if current ~= expected then return {0, current} end
local transitions = tonumber(ARGV[3])
if fence then
  if transitions < fence or (strict and transitions <= fence) then
    return {-1, tostring(fence)}
  end
end
local seq = redis.call('HINCRBY', KEYS[2], 'writes', 1)
local raw = ARGV[2]
local stored = string.sub(raw, 1, -2) .. ',"celeryLeaderSeq":' .. seq .. '}'
redis.call('SET', KEYS[1], stored, 'PX', ARGV[4])
if (not fence) or transitions > fence then
  redis.call('HSET', KEYS[2], 'transitions', transitions)
end
local version = redis.sha1hex(stored)
""" + CLOCK_LUA + """
if now_ms ~= '' and run_id ~= '' then
  redis.call('HSET', KEYS[2], 'written_ms', now_ms, 'lease_ms', ARGV[7], 'written_version', version, 'server', run_id)
else
  redis.call('HDEL', KEYS[2], 'written_ms', 'lease_ms', 'written_version', 'server')
end
-- the record's extra keys (the last once-per slot) outlive the lock key, as the token does
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'extra', ARGV[8]) else redis.call('HDEL', KEYS[2], 'extra') end
-- the notification is best effort: the write above has landed whatever PUBLISH answers
local published = redis.pcall('PUBLISH', ARGV[5], version .. ' ' .. ARGV[6])
if type(published) == 'table' and published.err then return {1, version, published.err} end
return {1, version}
"""

def cold_start_margin_ms(lease_ms: int) -> int:
    """Server time beyond the last lease before a record counts as over: 10 % of it, >= 1 s."""
    return max(1000, lease_ms // 10)


READ_SHA = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
WRITE_SHA = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()


class _Oversized(bytes):
    """The start of a value larger than any record; ``digest`` is the SHA-1 of all of it."""

    digest: str

    def __new__(cls, start: bytes, *, digest: str) -> "_Oversized":
        obj = super().__new__(cls, start)
        obj.digest = digest
        return obj


def _packed(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the Redis protocol, for one write.

    With hiredis, its C packer straight on each command: redis-py's ``pack_commands`` does
    the same through a Python pass over every argument first, a sixth of a renewal's CPU
    in a batch. Our arguments are only ``str``, ``bytes`` and ``int``, which both encode
    alike (UTF-8; an int as its decimal digits).
    """
    if _hiredis_pack is not None:
        try:
            return [b"".join([_hiredis_pack(command) for command in commands])]
        except TypeError:  # pragma: no cover - an argument hiredis does not take: redis-py's way
            pass
    return conn.pack_commands(commands)


def _extra_json(record: LeaderRecord) -> str:
    """The record's extra keys as JSON for the fence hash ('' when there are none)."""
    return canonical_json(dict(record.extra)) if record.extra else ""


def _fence_extra(got: list[Any]) -> dict[str, Any]:
    """The extra keys kept with the fence; anything unreadable counts as none."""
    if len(got) < 10 or not got[9]:
        return {}
    try:
        value = json.loads(got[9])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class _NoScript(Exception):
    """The server does not have the script cached (restarted, failed over): send it."""


def _version_of(raw: bytes, record: LeaderRecord) -> str:
    """SHA-1 of the stored bytes; ``g:`` marks undecodable content (stricter token rule)."""
    digest = hashlib.sha1(raw).hexdigest()
    return "g:" + digest if record.decode_error else digest


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pubsub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pub/sub connection blocks in its own thread, but never forever on a dead peer."""
    out = dict(kwargs)
    out.setdefault("socket_connect_timeout", 2.0)
    out.setdefault("socket_timeout", 5.0)
    out.setdefault("health_check_interval", 10)
    return out


class _Notifier(ChangeNotifier):
    """One pub/sub connection per backend on the prefix's channel (see :mod:`.notify`)."""

    label = "redis pub/sub"

    def __init__(self, backend: "RedisBackend") -> None:
        super().__init__()
        self._backend = backend
        self.subscribed = self.ready
        self._pubsub: Any = None

    def _interrupt(self) -> None:
        pubsub = self._pubsub
        conn = getattr(pubsub, "connection", None) if pubsub is not None else None
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    def _forked(self) -> None:
        self._pubsub = None

    def _listen(self) -> None:
        pubsub = self._pubsub = self._backend._pubsub_client().pubsub()
        try:
            pubsub.subscribe(self._backend.channel)
            while not self._stopping.is_set():
                # blocks while idle (stop() shuts the socket down); the health check runs in here
                message = pubsub.get_message(timeout=self.IDLE_READ)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._connected()
                elif message["type"] == "message":
                    self._deliver(_text(message["data"]))
        finally:
            self._pubsub = None
            with contextlib.suppress(Exception):
                pubsub.close()


class RedisLock(Lock):
    """One election's lock in Redis. Thread-safe; shares its backend's connections."""

    capabilities = CAPABILITIES

    def __init__(self, backend: "RedisBackend", name: str) -> None:
        if not name:
            raise ConfigurationError("the election name must not be empty")
        self._backend = backend
        self.name = name
        self.key = backend.prefix + "lock:" + name
        self.fence_key = backend.prefix + "fence:" + name
        self._closed = False
        self._reported_free: int | None = None

    def _read(self, timeout: float) -> tuple[bytes | None, int | None, tuple[float, int] | None, dict[str, Any]]:
        """(raw, fence, :meth:`_lease_over_for`, the extra keys kept with the fence)."""
        got = self._backend._script(READ_SCRIPT, READ_SHA, [self.key, self.fence_key], [MAX_RECORD_BYTES], timeout, self)
        raw, fence = got[0], got[1]
        if raw is not None and len(got) > 8 and got[8]:
            raw = _Oversized(raw, digest=_text(got[8]))
        return raw, self._fence_value(fence), self._lease_over_for(raw, got), _fence_extra(got)

    def _fence_value(self, fence: Any) -> int | None:
        if fence is None:
            return None
        try:
            return int(fence)
        except ValueError:
            raise self._backend._bad_fence(self) from None

    def _version(self, raw: bytes) -> tuple[LeaderRecord, str]:
        """The record (or placeholder) and version of stored bytes; for a value above the
        size limit, ``raw`` is its start and the version the server's SHA-1 of all of it."""
        if isinstance(raw, _Oversized):
            record = LeaderRecord.undecodable(len(raw), f"larger than {MAX_RECORD_BYTES} bytes")
            return record, "g:" + raw.digest
        record = decode_or_placeholder(raw, strip=(SEQ_KEY,))
        return record, _version_of(raw, record)

    def _lease_over_for(self, raw: bytes | None, got: list[Any]) -> tuple[float, int] | None:
        """(seconds since the last write's lease ran out, that moment in server ms), judged
        by the Redis server's clock alone.

        Only when the server that recorded the last write is the one answering now (same
        run_id: no restart, no failover), and the stored record is the one that write left
        (or the key has vanished). The last writer's term ended no later than its lease
        after it *sent* that write, which is before the server ran it; so once the server's
        clock has moved on by the lease plus a margin (for clock rate and small steps)
        since, no term of that record can still be running. ``None``: not provably over.
        """
        try:
            written_ms, lease_ms, written_version, server, now_ms, run_id = (
                None if v is None else _text(v) for v in got[2:8]
            )
        except (TypeError, ValueError):  # an older server-side script: conclude nothing
            return None
        if not (written_ms and lease_ms and server and run_id and now_ms) or server != run_id:
            return None
        if raw is not None and hashlib.sha1(raw).hexdigest() != written_version:
            return None  # somebody else's write (a hand edit, a foreign writer) came since
        try:
            ended_ms = int(written_ms) + int(lease_ms)
            past_ms = int(now_ms) - ended_ms
        except ValueError:
            return None
        if past_ms <= cold_start_margin_ms(int(lease_ms)):
            return None
        return past_ms / 1000.0, ended_ms

    def _log_free_since(self, record: LeaderRecord, over: tuple[float, int]) -> None:
        """Say it in words, once per ended lease."""
        past, ended_ms = over
        if self._reported_free != ended_ms:
            self._reported_free = ended_ms
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ended_ms / 1000.0)) + " UTC"
            log.info(
                "%s: no leader since %s (%s lease ended %.1f s ago by the Redis server's clock); free to take over",
                self.name,
                since,
                f"{printable(record.holder)}'s" if record.holder else "the last",
                past,
            )

    def _current_version(self, timeout: float) -> str | None:
        raw, fence, _, _ = self._read(timeout)
        if raw is not None:
            return self._version(raw)[1]
        return f"{ABSENT}{fence}" if fence is not None else None

    def get(self, timeout: float) -> Versioned | None:
        raw, fence, over_for, extra = self._read(timeout)
        if raw is None:
            if fence is None:
                return None
            if over_for is not None:
                # the key expired long after the last term's lease ended: free, at once
                free = LeaderRecord(holder="", transitions=fence, extra=extra)
                self._log_free_since(free, over_for)
                return Versioned(free, f"{ABSENT}{fence}")
            # Deleted, expired or evicted. Whoever held it may still believe it leads (a hand
            # delete, an eviction), so it reads as held by an unknown holder: candidates wait
            # one lease from now, then take it with a token above the fence.
            return Versioned(LeaderRecord(holder=VANISHED_HOLDER, transitions=fence, extra=extra), f"{ABSENT}{fence}")
        record, version = self._version(raw)
        if fence is not None and fence > record.transitions:
            # the key was rewritten with a lower token (by hand, or a foreign writer): never
            # let the next term go below a token already handed out
            record = record.evolve(transitions=fence)
        if over_for is not None and record.holder and not record.decode_error:
            # held on paper, but the server's clock says that lease ended long ago (all
            # candidates stopped or crashed): free; the compare-and-swap is on this version
            self._log_free_since(record, over_for)
            record = record.evolve(holder="", preferred_holder="")
        return Versioned(record, version)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._write(record, "", timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        if not expected_version:
            raise Conflict(f"{self.name}: empty expected version")
        return self._write(record, expected_version, timeout)

    def _write(self, record: LeaderRecord, expected: str, timeout: float) -> str:
        reply = self._backend._script(WRITE_SCRIPT, WRITE_SHA, [self.key, self.fence_key], self._write_args(record, expected), timeout, self)
        return self._write_outcome(reply, record, expected)

    def _write_args(self, record: LeaderRecord, expected: str) -> list[Any]:
        """ARGV of WRITE_SCRIPT for writing ``record`` over version ``expected``."""
        raw = encode_record(record)
        ttl_ms = self._backend.gc_expiry_ms(record.lease_duration)
        return [expected, raw, int(record.transitions), ttl_ms, self._backend.channel, self.name,
                int(math.ceil(max(0.0, record.lease_duration) * 1000)), _extra_json(record)]  # fmt: skip

    def _write_outcome(self, reply: Any, record: LeaderRecord, expected: str) -> str:
        """WRITE_SCRIPT's reply -> the new version, or the exception for this lock."""
        status, value = reply[0], _text(reply[1])
        if status == 1:
            if len(reply) > 2 and reply[2]:
                self._backend._publish_failed(_text(reply[2]))
            return value
        if status == 0:
            if not expected:
                raise Conflict(f"{self.name}: the lock exists")
            raise Conflict(f"{self.name}: the stored version moved on")
        # A token below the fence, or not above it when taking over a vanished key or
        # undecodable content. get() lifts every token to the fence, so this happens when the
        # engine overwrites undecodable content without having seen the last token (it then
        # counts from what it remembers). Not Conflict: the engine would retry at once,
        # forever; BackendUnavailable backs off by retry_period, and a candidate that has seen
        # the last token takes over instead.
        raise BackendUnavailable(
            f"{self.name}: refused to write fencing token {record.transitions}: the token counter "
            f"{self.fence_key!r} is already at {value} and tokens never go backwards; the lock key "
            f"probably holds something that is not a leader record (delete {self.key!r} to recover)"
        )

    def renew_batch(self) -> "RedisBackend":
        return self._backend

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        if self._backend._pid != os.getpid():
            self._backend._after_fork()
        self._backend._notifier.wait(self.name, self._current_version, version, timeout, waiter=self)

    def close(self) -> None:
        self._closed = True

    def describe(self) -> str:
        return f"redis lock {self.key!r} at {self._backend.describe()}"


class SentinelRedisLock(RedisLock):
    """The same lock through Sentinel: asynchronous replication, so not linearizable."""

    capabilities = SENTINEL_CAPABILITIES


class RedisBackend(Backend, RenewBatch):
    """Locks in one Redis (or a Sentinel-managed primary); one set of connections for all.

    Options in the URL query: ``prefix`` (key prefix), ``gc_margin`` (seconds added to twice
    the lease for the garbage-collection expiry), ``max_connections`` (per backend object,
    default 16; the pub/sub connection and up to :data:`BATCH_CONNECTIONS` for batched
    renewals are extra), ``socket_timeout`` and
    ``socket_connect_timeout`` (upper bounds; each call is also bounded by its own timeout),
    ``db``, ``client_name``, TLS files (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_cert_reqs``, ``ssl_check_hostname``) and, for Sentinel, ``sentinel_password``,
    ``sentinel_username``, ``ssl``.
    """

    schemes = ("redis", "rediss", "unix", "redis+sentinel")
    capabilities = CAPABILITIES

    def __init__(
        self,
        pool: redis.ConnectionPool,
        *,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        gc_margin: float = DEFAULT_GC_MARGIN,
        socket_timeout: float | None = None,
        socket_connect_timeout: float | None = None,
        sentinel: bool = False,
        pubsub_pool: redis.ConnectionPool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._pool = pool
        self._pubsub_pool = pubsub_pool or pool
        self.url = url
        self.prefix = prefix
        self.gc_margin = gc_margin
        self.channel = prefix + "changes"
        self.sentinel = sentinel
        if sentinel:
            self.capabilities = SENTINEL_CAPABILITIES  # type: ignore[misc]
        self._socket_timeout = socket_timeout
        self._socket_connect_timeout = socket_connect_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._batch_slots = threading.BoundedSemaphore(BATCH_CONNECTIONS)
        self._idle: collections.deque[Any] = collections.deque()
        self._idle_guard = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._notifier = _Notifier(self)
        self._scripts_loaded: set[str] = set()
        self._publish_warned = False

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str) -> "RedisBackend":
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in cls.schemes:
            raise ConfigurationError(f"not a Redis URL: {redact(url)!r}; use redis://, rediss://, unix:// or redis+sentinel://")
        options = UrlOptions(parts.query, scheme=scheme, known=OWN_OPTIONS | REDIS_OPTIONS)
        prefix = options.text("prefix", DEFAULT_PREFIX, allow_empty=True)
        if not prefix:
            raise ConfigurationError(f"{scheme}:// option ?prefix= must not be empty (default: {DEFAULT_PREFIX})")
        gc_margin = options.seconds("gc_margin", DEFAULT_GC_MARGIN)
        max_connections = options.integer("max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1)
        socket_timeout = options.seconds("socket_timeout", None)
        connect_timeout = options.seconds("socket_connect_timeout", None)
        common = dict(
            prefix=prefix,
            gc_margin=gc_margin,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
        # options redis-py reads itself, checked now: a bad value would only fail at the first
        # connection, over and over, while the election retries
        passed_on = options.rest()
        for key, allowed in (("protocol", ("2", "3")), ("ssl_cert_reqs", ("none", "optional", "required"))):
            if key in passed_on and passed_on[key].strip().lower() not in allowed:
                raise ConfigurationError(
                    f"{scheme}:// option ?{key}= must be one of {', '.join(allowed)}, got {passed_on[key][:40]!r}"
                )
        # each call sets its own socket timeouts; no hidden retries that would stretch them
        no_retry = {"retry": Retry(NoBackoff(), 0), "retry_on_timeout": False}
        if scheme == "redis+sentinel":
            return cls._from_sentinel_url(url, parts, options, common, no_retry)
        for key in sorted(OWN_OPTIONS - {"prefix", "gc_margin", "max_connections"}):
            if key in options:
                raise ConfigurationError(f"{scheme}:// option ?{key}= is only meaningful in a redis+sentinel:// URL")
        if scheme == "unix" and not parts.path:
            raise ConfigurationError("a unix:// Redis URL needs the socket path: unix:///run/redis/redis.sock?db=0")
        if scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"the Redis URL {redact(url)!r} has no host; write redis://host:6379/0")
        # redis-py reads the options we do not (db, ssl_*, client_name...) and the socket timeouts
        forward = options.rest()
        for key, seconds in (("socket_timeout", socket_timeout), ("socket_connect_timeout", connect_timeout)):
            if seconds is not None:
                forward[key] = repr(seconds)
        passed = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{urlencode(forward)}" if forward else "")
        try:
            kwargs = redis.connection.parse_url(passed)
        except ValueError as exc:
            raise ConfigurationError(f"cannot parse the Redis URL {redact(url)!r}: {exc}") from None
        if scheme != "unix" and parts.path.strip("/") and "db" not in options:
            try:
                int(parts.path.strip("/"))
            except ValueError:
                raise ConfigurationError(
                    f"the path of {redact(url)!r} must be a database number (redis://host:6379/0)"
                ) from None
        kwargs.update(no_retry)
        pool = redis.ConnectionPool(**kwargs)
        pubsub_pool = redis.ConnectionPool(**_pubsub_kwargs(kwargs))
        return cls(pool, url=url, pubsub_pool=pubsub_pool, **common)  # type: ignore[arg-type]

    @classmethod
    def _from_sentinel_url(
        cls, url: str, parts: Any, options: UrlOptions, common: dict[str, Any], no_retry: dict[str, Any]
    ) -> "RedisBackend":
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        sentinels: list[tuple[str, int]] = []
        for item in filter(None, hostlist.split(",")):
            host, _, port = item.rpartition(":") if item.rpartition(":")[0] else (item, "", "26379")
            host = host.strip("[]")
            try:
                sentinels.append((host, int(port)))
            except ValueError:
                raise ConfigurationError(f"bad sentinel address {item!r} in {redact(url)!r}; write host:26379") from None
        if not sentinels:
            raise ConfigurationError(
                f"no sentinels in {redact(url)!r}; write redis+sentinel://host1:26379,host2:26379/mymaster/0"
            )
        path = [unquote(p) for p in parts.path.split("/") if p]
        service = options.text("master") or options.text("service_name") or (path[0] if path else None)
        if not service:
            raise ConfigurationError(
                f"no master name in {redact(url)!r}; write redis+sentinel://host:26379/mymaster/0 (or ?master=mymaster)"
            )
        db: str | None = options.text("db") or (path[1] if len(path) > 1 else None)
        kwargs: dict[str, Any] = {}
        if db is not None:
            try:
                kwargs["db"] = int(db)
            except ValueError:
                raise ConfigurationError(f"database {db!r} in {redact(url)!r} is not a number") from None
        if userinfo:
            user, _, password = userinfo.partition(":")
            if user:
                kwargs["username"] = unquote(user)
            if password:
                kwargs["password"] = unquote(password)
        sentinel_kwargs: dict[str, Any] = {}
        for src, dst in (("sentinel_password", "password"), ("sentinel_username", "username")):
            if src in options:
                sentinel_kwargs[dst] = options.text(src, allow_empty=True)
        ssl = options.flag("ssl", False)
        kwargs.update(options.rest())
        timeout = common["socket_timeout"] or 2.0
        sentinel_kwargs.update(
            socket_timeout=timeout,
            socket_connect_timeout=common["socket_connect_timeout"] or timeout,
            retry=Retry(NoBackoff(), 0),
        )
        manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
        kwargs.update(no_retry)
        if ssl:
            kwargs["ssl"] = True
        pool = SentinelConnectionPool(service, manager, **dict(kwargs))
        pubsub_pool = SentinelConnectionPool(service, manager, **_pubsub_kwargs(kwargs))
        return cls(pool, url=url, pubsub_pool=pubsub_pool, sentinel=True, **common)

    def lock(self, name: str) -> RedisLock:
        if self._closed:
            raise ConfigurationError("this Redis backend is closed")
        return (SentinelRedisLock if self.sentinel else RedisLock)(self, name)

    def describe(self) -> str:
        return redact(self.url)

    def gc_expiry_ms(self, lease_duration: float) -> int:
        """Garbage-collection expiry of a lock key: twice the lease plus the margin, >= 1 s."""
        return max(1000, int(math.ceil((2 * max(0.0, lease_duration) + self.gc_margin) * 1000)))

    # --- connections ----------------------------------------------------------------------

    def _pubsub_client(self) -> redis.Redis:
        return redis.Redis(connection_pool=self._pubsub_pool)

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's sockets (never use or close them) and thread."""
        with self._idle_guard:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._idle = collections.deque()
            self._slots = threading.BoundedSemaphore(self.max_connections)
            self._batch_slots = threading.BoundedSemaphore(BATCH_CONNECTIONS)
            self._notifier = _Notifier(self)

    def _checkout(self, timeout: float, batch: bool = False) -> Any:
        """An idle connection, or a new one; at most ``max_connections`` in use at once by
        one-off calls and :data:`BATCH_CONNECTIONS` by batches (``batch``)."""
        if self._pid != os.getpid():
            self._after_fork()
        slots = self._batch_slots if batch else self._slots
        if not slots.acquire(timeout=max(0.0, timeout)):
            if batch:
                raise BackendUnavailable(
                    f"all {BATCH_CONNECTIONS} batch connections to {self.describe()} stayed busy for the "
                    f"call's {max(0.0, timeout):.3f} s timeout (more renewal batches at once than that)"
                )
            raise BackendUnavailable(
                f"all {self.max_connections} connections to {self.describe()} stayed busy for the call's "
                f"{max(0.0, timeout):.3f} s timeout (more calls at once than connections: raise ?max_connections=)"
            )
        with self._idle_guard:
            if self._idle:
                return self._idle.pop()
        try:
            return self._new_connection()
        except RedisError as exc:
            slots.release()
            raise BackendUnavailable(f"Redis at {self.describe()}: cannot open a connection: {scrub(exc, self.url)}") from None
        except BaseException:
            slots.release()
            raise

    def _new_connection(self) -> Any:
        """A new, unconnected connection with the pool's settings.

        Not ``pool.make_connection()``: redis-py's pool counts every connection it ever made
        and refuses more than its own ``max_connections`` (100 in redis-py 8) with
        ``MaxConnectionsError``, but the connections made here never go back to the pool (a
        dropped one is disconnected, not released), so after 100 replacements (a restart, a
        few timeouts) every call would fail. The number in use is bounded by ``_slots``.
        """
        pool = self._pool
        return pool.connection_class(**pool.connection_kwargs)

    def _checkin(self, conn: Any, healthy: bool, batch: bool = False) -> None:
        try:
            if healthy:
                with self._idle_guard:
                    if not self._closed:
                        self._idle.append(conn)
                        return
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001
                pass
        finally:
            (self._batch_slots if batch else self._slots).release()

    def _bound(self, seconds: float, limit: float | None) -> float:
        seconds = max(0.001, seconds)
        return min(seconds, limit) if limit else seconds

    def _connect_within(self, conn: Any, deadline: float, timeout: float) -> None:
        """Bound the checked-out connection's timeouts by what is left until ``deadline``; connect it if needed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendUnavailable(f"no time left to call Redis (timeout {timeout:.3f} s)")
        conn.socket_connect_timeout = self._bound(left, self._socket_connect_timeout)
        conn.socket_timeout = self._bound(left, self._socket_timeout)
        if conn._sock is None:
            conn.connect()

    def _credentials_refused(self, exc: AuthenticationError) -> ConfigurationError:
        return ConfigurationError(
            f"Redis at {self.describe()} refused the credentials ({exc}); put the right "
            "user and password in the URL: redis://USER:PASSWORD@host:6379/0"
        )

    def _call(self, timeout: float, *commands: tuple[Any, ...]) -> Any:
        """Send ``commands`` one after another on one connection, within ``timeout``.

        The first command whose reply is an error raises it (a ``ResponseError``); the
        reply of the last command is returned.
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        conn = self._checkout(timeout)
        healthy = False
        try:
            self._connect_within(conn, deadline, timeout)
            reply: Any = None
            for command in commands:
                conn._sock.settimeout(self._bound(deadline - time.monotonic(), self._socket_timeout))
                conn.send_command(*command, check_health=False)
                conn._sock.settimeout(self._bound(deadline - time.monotonic(), self._socket_timeout))
                try:
                    reply = conn.read_response()
                except ResponseError:
                    healthy = True
                    raise
            healthy = True
            return reply
        except AuthenticationError as exc:
            raise self._credentials_refused(exc) from None
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
                raise ConfigurationError(
                    f"the TLS certificate of Redis at {self.describe()} is not trusted ({exc}); give the CA "
                    "that signed it: rediss://host:6380/0?ssl_ca_certs=/path/to/ca.pem"
                ) from None
            unreachable = BackendUnavailable(f"Redis at {self.describe()} is unavailable: {exc}")
            unreachable.transport = True  # type: ignore[attr-defined]  # no answer at all (see check())
            raise unreachable from None
        except NoScriptError:
            raise _NoScript() from None
        except ResponseError as exc:
            raise self._response_error(exc) from None
        finally:
            self._checkin(conn, healthy)

    def _response_error(self, exc: ResponseError) -> Exception:
        message = str(exc)
        upper = message.upper()
        if isinstance(exc, (ReadOnlyError, MasterDownError, TryAgainError)):
            return BackendUnavailable(f"Redis at {self.describe()} cannot take writes now: {message}")
        if isinstance(exc, NoPermissionError) or upper.startswith("NOPERM") or "USER EXECUTING THE SCRIPT CAN'T" in upper:
            return self._acl_error(message)
        if upper.startswith("BADFENCE") or "HASH VALUE IS NOT AN INTEGER" in upper:
            return self._bad_fence(None)
        if upper.startswith(("NOAUTH", "WRONGPASS")):
            return ConfigurationError(
                f"Redis at {self.describe()} needs authentication ({message}); put it in the URL: "
                "redis://USER:PASSWORD@host:6379/0"
            )
        if "DB INDEX IS OUT OF RANGE" in upper or "INVALID DB INDEX" in upper:
            return ConfigurationError(
                f"Redis at {self.describe()} has no such database ({message}); use a database number "
                "below its 'databases' setting, e.g. redis://host:6379/0"
            )
        if "UNKNOWN COMMAND" in upper and ("EVAL" in upper or "SCRIPT" in upper):
            return ConfigurationError(
                f"Redis at {self.describe()} does not run Lua scripts ({message}); this backend needs "
                "EVAL/EVALSHA (compare-and-swap in one step): enable scripting or pick another backend"
            )
        if upper.startswith(("READONLY", "MASTERDOWN", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN")):
            return BackendUnavailable(f"Redis at {self.describe()} cannot take writes now: {message}")
        if "READONLY" in upper or "READ ONLY REPLICA" in upper:
            return BackendUnavailable(f"Redis at {self.describe()} cannot take writes now: {message}")
        return BackendUnavailable(f"Redis at {self.describe()} answered an error: {message}")

    def acl_rules(self) -> str:
        """Everything this backend needs, as the rules of ``ACL SETUSER``."""
        return f"~{self.prefix}* &{self.prefix}* {ACL_COMMANDS}"

    def _acl_error(self, message: str) -> ConfigurationError:
        """NOPERM (or a script's ACL refusal) -> the rule to add, for keys, channel or command."""
        upper = message.upper()
        command = re.search(r"run the '([^']+)' command", message)
        if "CHANNEL" in upper:
            rule, what = f"&{self.prefix}*", f"the notification channel {self.channel!r}"
        elif "KEY" in upper:
            rule, what = f"~{self.prefix}*", f"the keys under {self.prefix!r}"
        elif command:
            rule, what = f"+{command.group(1).lower()}", f"the command {command.group(1).upper()}"
        else:
            rule, what = ACL_COMMANDS, "a command its scripts run"
        scripts = "this backend needs Lua scripts (EVAL/EVALSHA) for compare-and-swap; " if (
            "SCRIPT" in upper or "EVAL" in upper
        ) and "USER EXECUTING THE SCRIPT" not in upper else ""
        return ConfigurationError(
            f"the Redis user lacks a permission for {what} ({message}); {scripts}add the ACL rule {rule} "
            f"(ACL SETUSER <user> {rule}); everything this backend needs: {self.acl_rules()}"
        )

    def _bad_fence(self, lock: "RedisLock | None") -> ConfigurationError:
        key = lock.fence_key if lock is not None else f"{self.prefix}fence:<name>"
        error = ConfigurationError(
            f"the fencing counter {key!r} at {self.describe()} holds a value that is not a whole number "
            "(fields 'transitions' and 'writes'); another program wrote it. Set 'transitions' to the highest "
            f"token ever handed out (HSET {key} transitions N) or choose another key prefix (?prefix=)"
        )
        error.bad_fence = True  # type: ignore[attr-defined]
        return error

    def _publish_failed(self, error: str) -> None:
        """A write landed but its notification did not: standbys then notice by polling."""
        if not self._publish_warned:
            self._publish_warned = True
            log.warning(
                "%s: a write landed but its notification was refused (%s); standbys notice changes only by "
                "polling until the Redis user may publish: add the ACL rule &%s* (ACL SETUSER <user> &%s*)",
                self.describe(),
                error,
                self.prefix,
                self.prefix,
            )

    def _pipeline(self, timeout: float, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read every reply: one round trip, on one of the
        connections reserved for batches.

        An error reply becomes that command's entry (a ``ResponseError``); a connection
        failure raises :class:`BackendUnavailable` for all (none's outcome is known).
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        conn = self._checkout(timeout, batch=True)
        healthy = False
        try:
            self._connect_within(conn, deadline, timeout)
            conn._sock.settimeout(self._bound(deadline - time.monotonic(), self._socket_timeout))
            conn.send_packed_command(_packed(conn, commands), check_health=False)
            replies = self._replies(conn, len(commands), deadline)
            healthy = True
            return replies
        except AuthenticationError as exc:
            raise self._credentials_refused(exc) from None
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BackendUnavailable(f"Redis at {self.describe()} is unavailable: {exc}") from None
        finally:
            self._checkin(conn, healthy, batch=True)

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        """Every item's WRITE_SCRIPT call in one pipeline (one round trip, no MULTI).

        Each call is the same atomic compare-and-swap as :meth:`RedisLock.update` on that
        election's own keys; one item's conflict or error never touches another's keys.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        out: list[str | Exception | None] = [None] * len(items)
        # indexes into ``items``, not (index, lock, record, version) tuples: a batch is in
        # flight for tens of ms, long enough for a GC generation change to promote them
        todo: list[int] = []
        for i, (lock, _record, expected) in enumerate(items):
            if not isinstance(lock, RedisLock) or lock._backend is not self:
                out[i] = ConfigurationError(f"{lock.describe()} does not belong to {self.describe()}")
            elif not expected:
                out[i] = Conflict(f"{lock.name}: empty expected version")
            else:
                todo.append(i)
        use_sha = True
        while todo:
            head = ("EVALSHA", WRITE_SHA) if use_sha else ("EVAL", WRITE_SCRIPT)
            commands = []
            for i in todo:
                lk, rec, exp = items[i]
                assert isinstance(lk, RedisLock)
                commands.append((*head, 2, lk.key, lk.fence_key, *lk._write_args(rec, exp)))
            replies = self._pipeline(deadline - time.monotonic(), commands)
            again = []
            for i, reply in zip(todo, replies):
                lock, record, expected = items[i]
                assert isinstance(lock, RedisLock)
                if isinstance(reply, NoScriptError) and use_sha:
                    again.append(i)  # not run: send the script itself
                    continue
                try:
                    if isinstance(reply, ResponseError):
                        raise self._script_error(reply, lock, deadline - time.monotonic())
                    out[i] = lock._write_outcome(reply, record, expected)
                except Exception as exc:  # noqa: BLE001 - this item's own outcome
                    out[i] = exc
            todo, use_sha = again, False
        return [o if o is not None else BackendUnavailable("no answer") for o in out]

    def _replies(self, conn: Any, count: int, deadline: float) -> list[Any]:
        """Read ``count`` replies, an error reply as its ``ResponseError`` (not raised).

        With hiredis, straight from its reader, going to the socket (with the time left)
        only when no whole reply is buffered: a few reads per batch, where redis-py's
        ``read_response`` per reply (and a socket timeout set before each) cost several
        microseconds a renewal.
        """
        replies: list[Any] = []
        parser = conn._parser
        reader = getattr(parser, "_reader", None)
        if _HiredisParser is not None and isinstance(parser, _HiredisParser) and reader is not None:
            while len(replies) < count:
                reply = reader.gets()
                if reply is _NOT_ENOUGH_DATA:
                    parser.read_from_socket(timeout=self._bound(deadline - time.monotonic(), self._socket_timeout))
                elif isinstance(reply, RedisConnectionError):
                    raise reply
                else:
                    replies.append(reply)
            return replies
        for _ in range(count):
            conn._sock.settimeout(self._bound(deadline - time.monotonic(), self._socket_timeout))
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    def _script_error(self, reply: ResponseError, lock: RedisLock, timeout: float) -> Exception:
        """An error reply of one script call -> the exception ``lock``'s own call would raise."""
        exc = self._response_error(reply)
        if isinstance(exc, BackendUnavailable) and "WRONGTYPE" in str(exc):
            return self._wrong_type(lock, max(0.001, timeout))
        if getattr(exc, "bad_fence", False):
            return self._bad_fence(lock)
        return exc

    def _script(self, script: str, sha: str, keys: list[str], args: list[Any], timeout: float, lock: RedisLock) -> Any:
        """EVALSHA, loading the script on NOSCRIPT (a restarted or failed-over server)."""
        try:
            try:
                return self._call(timeout, ("EVALSHA", sha, len(keys), *keys, *args))
            except _NoScript:
                return self._call(timeout, ("EVAL", script, len(keys), *keys, *args))
        except BackendUnavailable as exc:
            if "WRONGTYPE" in str(exc):
                raise self._wrong_type(lock, timeout) from None
            raise
        except ConfigurationError as exc:
            if getattr(exc, "bad_fence", False):
                raise self._bad_fence(lock) from None
            raise

    def _wrong_type(self, lock: RedisLock, timeout: float) -> ConfigurationError:
        kinds = []
        for key in (lock.key, lock.fence_key):
            try:
                kinds.append(f"{key!r} is a {_text(self._call(timeout, ('TYPE', key)))}")
            except Exception:  # noqa: BLE001 - best effort, for the message only
                pass
        return ConfigurationError(
            f"the keys of election {lock.name!r} hold data that is not celery-leader's "
            f"({'; '.join(kinds) or 'wrong type'}; expected a string and a hash). Another program "
            "uses these keys: choose another key prefix (?prefix=myapp:leader:) or, if the data is not "
            "needed, delete the keys. They are never overwritten automatically."
        )

    # --- start-up check -------------------------------------------------------------------

    def check(self, timeout: float = 5.0) -> None:
        """Reachable, authenticated, right database, scripts allowed, a writable primary."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.001, deadline - time.monotonic())

        self._call(left(), ("PING",))
        for script in (READ_SCRIPT, WRITE_SCRIPT):
            try:
                self._call(left(), ("SCRIPT", "LOAD", script))
            except BackendUnavailable as exc:
                if getattr(exc, "transport", False):
                    # a timeout or a broken connection says nothing about scripting: stay
                    # BackendUnavailable, so that check_once() logs it and the election retries
                    # (found by the chaos harness: a loaded machine made a new candidate exit)
                    raise
                raise ConfigurationError(
                    f"Redis at {self.describe()} does not accept Lua scripts ({exc}); this backend needs "
                    "EVAL/EVALSHA for compare-and-swap: enable scripting or pick another backend"
                ) from None
        try:
            role = self._call(left(), ("ROLE",))
        except (BackendUnavailable, ConfigurationError):
            role = None  # ROLE may be forbidden by ACLs; writes would show a replica anyway
        if role and _text(role[0]) in ("slave", "replica"):
            raise ConfigurationError(
                f"{self.describe()} is a read-only replica; point the URL at the primary, or use "
                "redis+sentinel://sentinel:26379/mymaster/0 to follow failovers"
            )
        # ACLs: the keys under the prefix, the commands the scripts run, and the channel
        scratch = f"{self.prefix}check:{os.getpid()}-{time.monotonic_ns()}"
        probe_keys = [scratch, f"{self.prefix}fence:celery-leader-check"]
        self._call(left(), ("EVAL", PROBE_SCRIPT, len(probe_keys), *probe_keys))
        self._call(left(), ("PUBLISH", self.channel, "check"))
        try:
            policy = self._call(left(), ("CONFIG", "GET", "maxmemory-policy"))
            maxmemory = self._call(left(), ("CONFIG", "GET", "maxmemory"))
        except (BackendUnavailable, ConfigurationError):
            return  # CONFIG is often disabled on managed Redis
        policy_value = _text(policy[1]) if len(policy) > 1 else "noeviction"
        limit = int(_text(maxmemory[1])) if len(maxmemory) > 1 else 0
        if limit and policy_value.startswith("allkeys"):
            log.warning(
                "Redis at %s evicts any key (maxmemory-policy %s): the fencing counters %sfence:* can be "
                "evicted and tokens could then go backwards; use noeviction or a volatile-* policy",
                self.describe(),
                policy_value,
                self.prefix,
            )

    # --- housekeeping -----------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notifier.stop(0.5)
        with self._idle_guard:
            idle, self._idle = list(self._idle), collections.deque()
        for conn in idle:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001
                pass
        for pool in {id(self._pool): self._pool, id(self._pubsub_pool): self._pubsub_pool}.values():
            try:
                pool.disconnect()
            except Exception:  # noqa: BLE001
                pass
