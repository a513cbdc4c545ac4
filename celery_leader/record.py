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
    "encode_record",
    "ANY_HOLDER",
]

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

    @classmethod
    def undecodable(cls, raw_size: int, reason: str) -> "LeaderRecord":
        """A placeholder for bytes that are not a record (held by nobody we know)."""
        return cls(holder="", decode_error=f"{reason} ({raw_size} bytes)")


def _millis(seconds: float) -> int:
    return int(round(seconds * 1000))


def encode_record(record: LeaderRecord, **additional: Any) -> bytes:
    """Encode as the Go seed's JSON; ``additional`` keys (a backend's nonce) are added."""
    doc: dict[str, Any] = dict(record.extra)
    doc.update(
        {
            KEY_HOLDER: record.holder,
            # a lease is never stored shorter than configured: round up
            KEY_LEASE_MS: int(math.ceil(round(record.lease_duration * 1000, 6))),
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
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordDecodeError(f"{key} is {type(value).__name__}, expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordDecodeError(f"{key} is not finite")
    return int(value)


def decode_record(raw: bytes | str, *, strip: tuple[str, ...] = ()) -> LeaderRecord:
    """Decode the Go seed's JSON. Raises :class:`RecordDecodeError` on anything else.

    ``strip`` names backend-private keys (a nonce, a version) not to carry in ``extra``.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordDecodeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RecordDecodeError(f"expected a JSON object, got {type(doc).__name__}")
    holder = doc.get(KEY_HOLDER, "")
    if holder is None:
        holder = ""
    if not isinstance(holder, str):
        raise RecordDecodeError(f"{KEY_HOLDER} is {type(holder).__name__}, expected a string")
    preferred = doc.get(KEY_PREFERRED, "") or ""
    if not isinstance(preferred, str):
        raise RecordDecodeError(f"{KEY_PREFERRED} is not a string")
    lease_ms = _int(doc, KEY_LEASE_MS)
    transitions = _int(doc, KEY_TRANSITIONS)
    if lease_ms < 0 or transitions < 0:
        raise RecordDecodeError("negative lease duration or transitions")
    extra = {k: v for k, v in doc.items() if k not in _KNOWN and k not in strip}
    return LeaderRecord(
        holder=holder,
        lease_duration=lease_ms / 1000.0,
        acquire_time=_int(doc, KEY_ACQUIRE) / 1000.0,
        renew_time=_int(doc, KEY_RENEW) / 1000.0,
        transitions=transitions,
        preferred_holder=preferred,
        extra=extra,
    )


def decode_or_placeholder(raw: bytes, *, strip: tuple[str, ...] = ()) -> LeaderRecord:
    """Decode, or return an :meth:`LeaderRecord.undecodable` placeholder (logged once by the engine)."""
    try:
        return decode_record(raw, strip=strip)
    except RecordDecodeError as exc:
        return LeaderRecord.undecodable(len(raw), str(exc))
