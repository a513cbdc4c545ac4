"""The Lease <-> LeaderRecord codec: pure functions, written exactly as client-go writes a Lease.

The spec carries ``holderIdentity``, ``leaseDurationSeconds`` (whole seconds, rounded
*up*), ``acquireTime``/``renewTime`` (MicroTime: UTC, six fraction digits) and
``leaseTransitions``; every other field of the Lease is sent back as it was read. No
Kubernetes client is needed here.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import threading
from typing import Any

from ...once import LAST_SLOT_KEY
from ...record import MAX_MILLIS, MAX_TRANSITIONS, LeaderRecord

__all__ = [
    "GROUP_VERSION",
    "PREFERRED_HOLDER_ANNOTATION",
    "SPEC_KEYS",
    "format_microtime",
    "parse_microtime",
    "lease_seconds",
    "lease_to_record",
    "record_to_spec",
    "lease_body",
    "resource_version",
]

log = logging.getLogger(__name__)

GROUP_VERSION = "coordination.k8s.io/v1"

#: where ``preferred_holder`` lives when the Lease has no ``strategy``: the API server
#: rejects ``spec.preferredHolder`` without ``spec.strategy`` (422), and setting a
#: strategy would hand the Lease to Kubernetes' coordinated leader election.
PREFERRED_HOLDER_ANNOTATION = "celery-leader.io/preferred-holder"
#: the last completed once-per slot (a Lease spec has no room for unknown fields: the API
#: server drops them, so this extra key lives in an annotation)
LAST_SLOT_ANNOTATION = "celery-leader.io/last-slot"

#: the spec fields that make up the leader record; every other spec field is kept as is
SPEC_KEYS = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions", "preferredHolder")

_MICROTIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_warned_durations: set[float] = set()
_warn_guard = threading.Lock()


def format_microtime(seconds: float) -> str:
    """Unix seconds -> MicroTime as client-go writes it: ``2024-05-01T10:00:00.123456Z``.

    Formatted by hand from integer microseconds: the client's own datetime serialisation
    drops the zone of naive datetimes and the fraction when microsecond == 0.
    """
    micros = int(round(seconds * 1_000_000))
    stamp = _EPOCH + _dt.timedelta(microseconds=micros)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}Z"


def parse_microtime(value: str) -> float:
    """MicroTime (or any RFC 3339 time) -> Unix seconds, exact to the microsecond."""
    m = _MICROTIME_RE.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {value[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "").ljust(6, "0")[:6]
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = _dt.timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = _dt.timezone(sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    stamp = _dt.datetime(year, month, day, hour, minute, second, int(frac), tzinfo=tz)
    micros = (stamp - _EPOCH) // _dt.timedelta(microseconds=1)
    return micros / 1_000_000


def lease_seconds(duration: float) -> int:
    """The engine's lease duration as whole seconds, rounded up (never stored shorter)."""
    whole = max(1, int(math.ceil(round(duration, 6))))
    if whole != duration and duration > 0:
        with _warn_guard:
            first = duration not in _warned_durations
            _warned_durations.add(duration)
        if first:
            log.warning(
                "a Kubernetes Lease stores whole seconds: lease_duration=%s is stored as "
                "leaseDurationSeconds=%d (rounded up, as other candidates must wait at least that long); "
                "configure a whole number of seconds to avoid this",
                duration,
                whole,
            )
    return whole


def _int_field(spec: dict[str, Any], key: str, limit: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"spec.{key} is {type(value).__name__}, expected an integer")
    if not -limit < value < limit:
        raise ValueError(f"spec.{key} is out of range")
    return value


def lease_to_record(obj: Any) -> LeaderRecord:
    """A Lease object (dict as the API returns it) -> LeaderRecord.

    Never raises: a Lease we cannot interpret becomes :meth:`LeaderRecord.undecodable`
    (held by an unknown holder), keeping its ``leaseTransitions`` when that is readable
    so that the fencing token never goes down.
    """
    spec: Any = obj.get("spec") if isinstance(obj, dict) else None
    if spec is None:
        spec = {}
    transitions_hint = 0
    try:
        if not isinstance(spec, dict):
            raise ValueError(f"spec is {type(spec).__name__}, expected an object")
        with_transitions = spec.get("leaseTransitions")
        if (
            isinstance(with_transitions, int)
            and not isinstance(with_transitions, bool)
            and 0 < with_transitions < MAX_TRANSITIONS
        ):
            transitions_hint = with_transitions
        holder = spec.get("holderIdentity")
        if holder is None:
            holder = ""
        if not isinstance(holder, str):
            raise ValueError(f"spec.holderIdentity is {type(holder).__name__}, expected a string")
        duration = _int_field(spec, "leaseDurationSeconds", MAX_MILLIS // 1000)
        if duration is None:
            if holder:
                # client-go would read 0 and take it over at once; we cannot know how long
                # this holder believes it holds, so it is held until unchanged for our own lease
                raise ValueError("held Lease without spec.leaseDurationSeconds")
            duration = 0
        if duration < 0 or (holder and duration == 0):
            raise ValueError(f"spec.leaseDurationSeconds is {duration}")
        transitions = _int_field(spec, "leaseTransitions", MAX_TRANSITIONS) or 0
        if transitions < 0:
            raise ValueError("spec.leaseTransitions is negative")
        times: dict[str, float] = {}
        for key in ("acquireTime", "renewTime"):
            value = spec.get(key)
            if value is None:
                times[key] = 0.0
            elif isinstance(value, str):
                times[key] = parse_microtime(value)
            else:
                raise ValueError(f"spec.{key} is {type(value).__name__}, expected a string")
        preferred = spec.get("preferredHolder") or ""
        if not preferred:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            annotations = meta.get("annotations") if isinstance(meta, dict) else None
            preferred = annotations.get(PREFERRED_HOLDER_ANNOTATION, "") if isinstance(annotations, dict) else ""
        if not isinstance(preferred, str):
            raise ValueError("spec.preferredHolder is not a string")
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # a year out of range, a zone offset of 99 hours, nesting too deep: not a record
        try:
            size = len(json.dumps(spec, default=str))
        except (ValueError, TypeError, OverflowError, RecursionError):
            size = 0
        return LeaderRecord.undecodable(size, f"Lease is not a leader record: {exc}").evolve(transitions=transitions_hint)
    extra = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    slot = annotations.get(LAST_SLOT_ANNOTATION) if isinstance(annotations, dict) else None
    if isinstance(slot, str):
        extra[LAST_SLOT_KEY] = slot
    return LeaderRecord(
        holder=holder,
        lease_duration=float(duration),
        acquire_time=times["acquireTime"],
        renew_time=times["renewTime"],
        transitions=transitions,
        preferred_holder=preferred,
        extra=extra,
    )


def record_to_spec(record: LeaderRecord, base: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """LeaderRecord -> (Lease spec, preferred-holder annotation value or None).

    ``base`` is the spec last read: fields that are not part of the record (``strategy``,
    fields of a newer server) are written back unchanged, overlaid by ``record.extra``.
    """
    spec: dict[str, Any] = {k: v for k, v in (base or {}).items() if k not in SPEC_KEYS}
    spec.update({k: v for k, v in record.extra.items() if k not in SPEC_KEYS and k != LAST_SLOT_KEY})
    spec["holderIdentity"] = record.holder
    spec["leaseDurationSeconds"] = lease_seconds(record.lease_duration)
    if record.acquire_time > 0:
        spec["acquireTime"] = format_microtime(record.acquire_time)
    if record.renew_time > 0:
        spec["renewTime"] = format_microtime(record.renew_time)
    spec["leaseTransitions"] = int(record.transitions)
    annotation = None
    if record.preferred_holder:
        if spec.get("strategy"):
            spec["preferredHolder"] = record.preferred_holder
        else:
            annotation = record.preferred_holder
    return spec, annotation


def lease_body(
    namespace: str, name: str, record: LeaderRecord, base: dict[str, Any] | None, resource_version: str | None
) -> dict[str, Any]:
    """The whole Lease to send: ``base`` (as read) with the record's spec; metadata kept."""
    obj: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    obj["apiVersion"] = GROUP_VERSION
    obj["kind"] = "Lease"
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    if resource_version is None:
        meta.pop("resourceVersion", None)
    else:
        meta["resourceVersion"] = resource_version
    spec, annotation = record_to_spec(record, obj.get("spec") if isinstance(obj.get("spec"), dict) else None)
    obj["spec"] = spec
    annotations = dict(meta.get("annotations") or {})
    if annotation is None:
        annotations.pop(PREFERRED_HOLDER_ANNOTATION, None)
    else:
        annotations[PREFERRED_HOLDER_ANNOTATION] = annotation
    slot = record.extra.get(LAST_SLOT_KEY)
    if isinstance(slot, str):
        annotations[LAST_SLOT_ANNOTATION] = slot
    else:
        annotations.pop(LAST_SLOT_ANNOTATION, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    obj.pop("status", None)
    return obj


def resource_version(obj: Any) -> str | None:
    """``metadata.resourceVersion`` of an API object, or None whatever the object looks like."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    value = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return str(value) if value else None
