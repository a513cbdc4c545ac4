"""The leader record and its JSON codec.

The JSON keys are those of the Go seed project (``go.linka.cloud/leaderelection``) so that
Go and Python candidates can share one lock object. Keys we do not know are kept in
``LeaderRecord.extra`` and written back unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .errors import RecordDecodeError

__all__ = [
    "LeaderRecord",
    "RecordDecodeError",
    "decode_record",
    "decode_or_placeholder",
    "encode_record",
    "printable",
    "ANY_HOLDER",
    "MAX_RECORD_BYTES",
]

#: a record is a few hundred bytes; anything longer than this is not one. Backends that
#: can ask for a prefix read at most ``MAX_RECORD_BYTES + 1`` bytes.
MAX_RECORD_BYTES = 64 * 1024
#: times (Unix milliseconds) and lease durations must be below this: exact in a float,
#: a JavaScript number and a Go int64, and far beyond any real date (year 287,396)
MAX_MILLIS = 2**53
#: the fencing token must fit a signed 64-bit integer (Go, SQL BIGINT, Redis)
MAX_TRANSITIONS = 2**63

#: ``preferred_holder`` value that asks the current holder to step down in favour of
#: anybody (``celery-leader step-down`` without ``--to``).
ANY_HOLDER = "*"

KEY_HOLDER = "holderIdentity"
KEY_LEASE_MS = "leaseDurationMilliSeconds"
KEY_ACQUIRE = "acquireTime"
KEY_RENEW = "renewTime"
KEY_TRANSITIONS = "leaderTransitions"
KEY_PREFERRED = "preferredHolder"
_KNOWN = {KEY_HOLDER, KEY_LEASE_MS, KEY_ACQUIRE, KEY_RENEW, KEY_TRANSITIONS, KEY_PREFERRED}


#: how a frozen dataclass sets its own fields
_set = object.__setattr__


@dataclass(frozen=True)
class LeaderRecord:
    """Who holds the lock and for how long.

    Times are wall-clock Unix seconds and only informational: elections decide on
    local monotonic observation, never by comparing these with the local clock.
    ``transitions`` is the fencing token: it never decreases and grows with every term.
    """

    holder: str = ""
    lease_duration: float = 0.0
    acquire_time: float = 0.0
    renew_time: float = 0.0
    transitions: int = 0
    preferred_holder: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: set when the stored bytes could not be decoded (the error message); such a record
    #: is treated as held by an unknown holder.
    decode_error: str | None = field(default=None, compare=False)

    @property
    def is_free(self) -> bool:
        return self.holder == "" and self.decode_error is None

    def evolve(self, **changes: Any) -> "LeaderRecord":
        return replace(self, **changes)

    def renewed(self, renew_time: float, lease_duration: float) -> "LeaderRecord":
        """``evolve(renew_time=..., lease_duration=...)`` for the copy every renewal makes.

        The same fields, without ``dataclasses.replace``'s walk over every field and its
        call to ``__init__`` (a tenth of a renewal's CPU at 1,000 elections in one process).
        Set one by one, not through ``__dict__``: that would give each record a dict object
        of its own, one more for every full garbage collection to walk.
        """
        new = object.__new__(type(self))
        _set(new, "holder", self.holder)
        _set(new, "lease_duration", lease_duration)
        _set(new, "acquire_time", self.acquire_time)
        _set(new, "renew_time", renew_time)
        _set(new, "transitions", self.transitions)
        _set(new, "preferred_holder", self.preferred_holder)
        _set(new, "extra", self.extra)
        _set(new, "decode_error", self.decode_error)
        return new

    @classmethod
    def undecodable(cls, raw_size: int, reason: str) -> "LeaderRecord":
        """A placeholder for bytes that are not a record (held by nobody we know)."""
        return cls(holder="", decode_error=f"{reason} ({raw_size} bytes)")


#: one encoder for every record: ``json.dumps`` with arguments builds a new one per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def canonical_json(doc: Any) -> str:
    """``doc`` as compact JSON with sorted keys: the form records and their extras are stored in."""
    return _ENCODER.encode(doc)


def _millis(seconds: float) -> int:
    return int(round(seconds * 1000))


#: JSON of a string, as the encoder above writes it (``ensure_ascii``)
_quote = json.encoder.encode_basestring_ascii


def _lease_millis(seconds: float) -> int:
    # a lease is never stored shorter than configured: round up
    return int(math.ceil(round(seconds * 1000, 6)))


def encode_record(record: LeaderRecord, **additional: Any) -> bytes:
    """Encode as the Go seed's JSON; ``additional`` keys (a backend's nonce) are added."""
    if not record.extra and not additional:
        # the common record (no extra keys: every renewal of a plain election) written out
        # directly, the same bytes as the general way below (tests/core compares them) at a
        # third of the cost; a batch encodes hundreds of these per call
        preferred = f'"{KEY_PREFERRED}":{_quote(record.preferred_holder)},' if record.preferred_holder else ""
        return (
            f'{{"{KEY_ACQUIRE}":{_millis(record.acquire_time)},"{KEY_HOLDER}":{_quote(record.holder)},'
            f'"{KEY_TRANSITIONS}":{int(record.transitions)},"{KEY_LEASE_MS}":{_lease_millis(record.lease_duration)},'
            f'{preferred}"{KEY_RENEW}":{_millis(record.renew_time)}}}'
        ).encode()
    doc: dict[str, Any] = dict(record.extra)
    doc.update(
        {
            KEY_HOLDER: record.holder,
            KEY_LEASE_MS: _lease_millis(record.lease_duration),
            KEY_ACQUIRE: _millis(record.acquire_time),
            KEY_RENEW: _millis(record.renew_time),
            KEY_TRANSITIONS: int(record.transitions),
        }
    )
    if record.preferred_holder:
        doc[KEY_PREFERRED] = record.preferred_holder
    else:
        doc.pop(KEY_PREFERRED, None)
    doc.update(additional)
    return _ENCODER.encode(doc).encode()


def _int(doc: Mapping[str, Any], key: str, limit: int) -> int:
    """A whole number in ``[0, limit)``; a finite float is truncated as Go's JSON would not be."""
    value = doc.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordDecodeError(f"{key} is {type(value).__name__}, expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordDecodeError(f"{key} is not finite")
    if not -limit < value < limit:
        raise RecordDecodeError(f"{key} is out of range (must be below 2^{limit.bit_length() - 1})")
    return int(value)


def _refuse_constant(name: str) -> Any:
    raise RecordDecodeError(f"not JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordDecodeError(f"not JSON: number {text[:20]}... is too large")
    return value


def decode_record(raw: bytes | str, *, strip: tuple[str, ...] = ()) -> LeaderRecord:
    """Decode the Go seed's JSON. Raises :class:`RecordDecodeError` on anything else.

    Never raises anything else, whatever the bytes: deep nesting, huge numbers, ``NaN``,
    wrong types and more than :data:`MAX_RECORD_BYTES` are all ``RecordDecodeError``.
    ``strip`` names backend-private keys (a nonce, a version) not to carry in ``extra``.
    """
    try:
        return _decode(raw, strip)
    except RecordDecodeError:
        raise
    except RecursionError:
        raise RecordDecodeError("not a record: nested too deeply") from None
    except (ValueError, TypeError, OverflowError, MemoryError, UnicodeError) as exc:
        raise RecordDecodeError(f"not a record: {type(exc).__name__}: {str(exc)[:200]}") from None


def _decode(raw: bytes | str, strip: tuple[str, ...]) -> LeaderRecord:
    if not isinstance(raw, (bytes, bytearray, str)):
        raise RecordDecodeError(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordDecodeError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        doc = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, RecordDecodeError):
            raise
        raise RecordDecodeError(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise RecordDecodeError(f"expected a JSON object, got {type(doc).__name__}")
    holder = doc.get(KEY_HOLDER, "")
    if holder is None:
        holder = ""
    if not isinstance(holder, str):
        raise RecordDecodeError(f"{KEY_HOLDER} is {type(holder).__name__}, expected a string")
    preferred = doc.get(KEY_PREFERRED)
    if preferred is None:
        preferred = ""
    if not isinstance(preferred, str):
        raise RecordDecodeError(f"{KEY_PREFERRED} is not a string")
    lease_ms = _int(doc, KEY_LEASE_MS, MAX_MILLIS)
    transitions = _int(doc, KEY_TRANSITIONS, MAX_TRANSITIONS)
    acquire_ms = _int(doc, KEY_ACQUIRE, MAX_MILLIS)
    renew_ms = _int(doc, KEY_RENEW, MAX_MILLIS)
    if lease_ms < 0 or transitions < 0:
        raise RecordDecodeError("negative lease duration or transitions")
    extra = {k: v for k, v in doc.items() if k not in _KNOWN and k not in strip}
    return LeaderRecord(
        holder=holder,
        lease_duration=lease_ms / 1000.0,
        acquire_time=acquire_ms / 1000.0,
        renew_time=renew_ms / 1000.0,
        transitions=transitions,
        preferred_holder=preferred,
        extra=extra,
    )


def decode_or_placeholder(raw: bytes | str | memoryview, *, strip: tuple[str, ...] = (), size: int | None = None) -> LeaderRecord:
    """Decode, or return an :meth:`LeaderRecord.undecodable` placeholder (logged once by the engine).

    Never raises. ``size`` is the stored size when ``raw`` is only a prefix of it (a
    backend that read at most ``MAX_RECORD_BYTES + 1`` bytes).
    """
    if isinstance(raw, memoryview):  # a database driver's binary column
        raw = raw.tobytes()
    length = size if size is not None else (len(raw) if isinstance(raw, (bytes, bytearray, str)) else 0)
    if length > MAX_RECORD_BYTES:
        return LeaderRecord.undecodable(length, f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        return decode_record(raw, strip=strip)
    except RecordDecodeError as exc:
        return LeaderRecord.undecodable(length, str(exc))


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int = 200) -> str:
    """``text`` safe to print or log: control and format characters (ESC, DEL, C1, U+2028,
    lone surrogates...) as backslash escapes, and at most ``limit`` characters.

    Holder names come from the lock store, which anybody with write access can fill: an
    ESC sequence must not rewrite a terminal, a newline must not forge a log line.
    """
    value = text if isinstance(text, str) else str(text)
    out = []
    for ch in value[:limit]:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if len(value) > limit:
        out.append("...")
    return "".join(out)
