"""Fenced Redis writes: SET, HSET, XADD, INCRBY and RPUSH that refuse a lower token.

Each write is one Lua script, so the check and the write are one atomic step on the
server. The highest token written so far is kept in a companion key beside the data
(``KEY:fence`` unless ``fence_key=`` names another), so the data keeps its own type: a
plain string stays readable with ``GET``, a hash with ``HGETALL``, a stream with ``XRANGE``.
The companion key never expires (it must outlive the data: a fence that vanished would let
a deposed leader write again) and is compared as an exact decimal, never as a float.

In Redis Cluster both keys must hash to the same slot: put a hash tag in the key
(``{report}:status`` gives ``{report}:status:fence``).

::

    from celery_leader.fencing.redis import fenced_set, fenced_xadd

    def work(leadership):
        fenced_set(r, "report:status", leadership.token, "running")
        fenced_xadd(r, "report:log", leadership.token, {"event": "done"})

A refused write raises :class:`~celery_leader.errors.StaleTokenError`; a token equal to
the stored one is accepted (one term writes many times).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from . import check_token, stale

__all__ = [
    "fenced_set",
    "fenced_hset",
    "fenced_xadd",
    "fenced_incrby",
    "fenced_rpush",
    "observe",
    "fenced_log_append",
    "read_fenced_log",
    "highest_token",
    "fence_key_for",
]

log = logging.getLogger(__name__)

#: KEYS[1] the data, KEYS[2] the fence; ARGV[1] the token (canonical decimal), ARGV[2] the
#: mode, then the mode's arguments. Returns {1, result} when written, {0, seen} when refused,
#: {-1, raw} when the fence holds something that is not a token (refused: fail closed).
_SCRIPT = """
local token = ARGV[1]
local seen = redis.call('GET', KEYS[2])
if seen then
  if not string.match(seen, '^%d+$') then return {-1, seen} end
  -- exact comparison of canonical decimals: shorter is smaller, else lexicographic
  if #token < #seen or (#token == #seen and token < seen) then return {0, seen} end
end
if seen ~= token then redis.call('SET', KEYS[2], token) end
local mode = ARGV[2]
local result
if mode == 'set' then
  if ARGV[4] ~= '' then
    result = redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    result = redis.call('SET', KEYS[1], ARGV[3])
  end
  result = 1
elseif mode == 'hset' then
  result = redis.call('HSET', KEYS[1], unpack(ARGV, 3))
elseif mode == 'xadd' then
  if ARGV[3] ~= '' then
    result = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
  else
    result = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
  end
elseif mode == 'incrby' then
  result = redis.call('INCRBY', KEYS[1], ARGV[3])
elseif mode == 'rpush' then
  result = redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
elseif mode == 'observe' then
  result = 1
else
  return redis.error_reply('celery-leader fence: unknown mode ' .. mode)
end
return {1, result}
"""

_ATTR = "_celery_leader_fence_script"


def fence_key_for(key: str) -> str:
    """The companion key that keeps ``key``'s highest token: ``KEY:fence``."""
    return f"{key}:fence"


def _run(client: Any, key: str, token: Any, mode: str, args: list[Any], fence_key: str | None) -> Any:
    value = check_token(token)
    fence = fence_key or fence_key_for(key)
    script = getattr(client, _ATTR, None)
    if script is None:  # one per client: redis-py then uses EVALSHA, and reloads after a restart
        script = client.register_script(_SCRIPT)
        try:
            setattr(client, _ATTR, script)
        except AttributeError:
            pass
    status, result = script(keys=[key, fence], args=[str(value), mode, *args])
    if status == 1:
        return result
    if status == -1:
        raise stale_fence(key, fence, value, result)
    raise stale(f"Redis key {key!r}", value, int(result))


def stale_fence(key: str, fence: str, token: int, raw: Any) -> Exception:
    err = stale(f"Redis key {key!r}", token, None)
    err.args = (
        f"fenced write to Redis key {key!r} refused: its fence {fence!r} holds {raw!r:.40}, not a token; "
        f"repair it by hand with the highest token ever used (SET {fence} N), never by deleting it",
    )
    return err


def _pairs(mapping: Mapping[Any, Any], what: str) -> list[Any]:
    if not mapping:
        raise ValueError(f"{what} needs at least one field")
    return [item for pair in mapping.items() for item in pair]


def fenced_set(client: Any, key: str, token: Any, value: Any, *, px: int | None = None,
               fence_key: str | None = None) -> None:
    """``SET key value [PX px]`` unless a higher token has written ``key``."""
    _run(client, key, token, "set", [value, "" if px is None else int(px)], fence_key)


def fenced_hset(client: Any, key: str, token: Any, mapping: Mapping[Any, Any], *, fence_key: str | None = None) -> int:
    """``HSET key f v ...`` unless a higher token has written ``key``; returns the fields added."""
    return int(_run(client, key, token, "hset", _pairs(mapping, "fenced_hset"), fence_key))


def fenced_xadd(client: Any, key: str, token: Any, fields: Mapping[Any, Any], *, maxlen: int | None = None,
                fence_key: str | None = None) -> str:
    """``XADD key [MAXLEN ~ n] * f v ...`` unless a higher token has written ``key``; returns the entry id."""
    result = _run(client, key, token, "xadd", ["" if maxlen is None else int(maxlen), *_pairs(fields, "fenced_xadd")],
                  fence_key)
    return result.decode() if isinstance(result, bytes) else str(result)


def fenced_incrby(client: Any, key: str, token: Any, amount: int = 1, *, fence_key: str | None = None) -> int:
    """``INCRBY key amount`` unless a higher token has written ``key``; returns the new value.

    A fenced counter: e.g. the chaos harness's count of work done, which a paused leader
    must not bump after its term.
    """
    return int(_run(client, key, token, "incrby", [int(amount)], fence_key))


def fenced_rpush(client: Any, key: str, token: Any, *values: Any, fence_key: str | None = None) -> int:
    """``RPUSH key v ...`` unless a higher token has written ``key``; returns the list's length.

    A fenced append-only log.
    """
    if not values:
        raise ValueError("fenced_rpush needs at least one value")
    return int(_run(client, key, token, "rpush", list(values), fence_key))


def fenced_log_append(client: Any, key: str, token: Any, **fields: Any) -> str:
    """Append an entry carrying its token to the stream ``key``, unless a higher token appended before.

    The downstream store of a test harness (``benchmarks/chaos.py``): every term's work
    appends ``fenced_log_append(r, "work-log", leadership.token, node=..., n=...)``; then
    :func:`read_fenced_log` must show tokens that never go down, whatever was paused or
    killed. Returns the entry id.
    """
    value = check_token(token)
    return fenced_xadd(client, key, value, {"token": value, **fields})


def read_fenced_log(client: Any, key: str) -> list[tuple[int, dict[str, str]]]:
    """The entries of a :func:`fenced_log_append` stream in order: ``(token, other fields)``."""
    entries = []
    for _id, raw in client.xrange(key):
        fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                  for k, v in raw.items()}
        entries.append((int(fields.pop("token")), fields))
    return entries


def observe(client: Any, key: str, token: Any, *, fence_key: str | None = None) -> None:
    """Raise the fence of ``key`` to ``token`` without writing data; refuse a lower token.

    The check a task runs before it starts (:mod:`celery_leader.fencing.celery`): once a
    message of term N has run, a message of an older term is refused.
    """
    _run(client, key, token, "observe", [], fence_key)


def highest_token(client: Any, key: str, *, fence_key: str | None = None) -> int | None:
    """The highest token written to ``key`` so far (``None``: never fenced)."""
    raw = client.get(fence_key or fence_key_for(key))
    return None if raw is None else int(raw)
