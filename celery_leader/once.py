"""Once per slot: cron on every host, the job runs once per schedule slot across all of them.

A leader lock alone is not enough for cron: the first host runs the job, finishes and
releases, and a host whose cron fired a second later then finds the lock free and runs it
again. So the last *completed* slot is kept with the lock, in the record's extra key
``celeryLeaderLastSlot`` (preserved by every backend like any unknown key):

1. a candidate reads the record; if its slot is already marked, it skips;
2. otherwise it stands by for leadership; once leading it checks the mark again (the
   acquisition was a compare-and-swap on the latest record, so the check is current);
3. it runs the job; if the job succeeded and the term still holds, the mark is written
   with a compare-and-swap (a renewal) *before* the lock is released;
4. a standby that sees the mark (or wins the lock and finds it) skips.

A run that fails, or a host that crashes mid-run, leaves the slot unmarked: a host still
waiting (or started later in the same slot) runs it.

Slots: ``slot = floor(unix time / period)``, aligned to the Unix epoch, that is to UTC
(``1d`` slots start at 00:00 UTC, ``1h`` at every full hour). The slot is taken when the
run starts, so a host waiting for a long job keeps its own slot. For other alignments
(local midnight, "the 2026-11 invoice run") pass an explicit key (``slot="2026-11"``).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from .errors import ConfigurationError
from .record import LeaderRecord

__all__ = [
    "LAST_SLOT_KEY",
    "Slot",
    "SlotOutcome",
    "current_leadership",
    "once_per",
    "parse_period",
    "run_once_per",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the record's extra key holding the last completed slot
LAST_SLOT_KEY = "celeryLeaderLastSlot"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}\Z")

_current = threading.local()


def parse_period(text: str | float) -> float:
    """``"1h"``, ``"30m"``, ``"1h30m"``, ``"1d"``, ``"90s"`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        try:
            seconds = float(value)
        except ValueError:
            parts = _PART.findall(value)
            if not parts or "".join(n + u for n, u in parts) != value:
                raise ConfigurationError(
                    f"period {text!r} is not a duration: use e.g. 90s, 15m, 1h, 1h30m, 1d"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 1:
        raise ConfigurationError(f"period {text!r} must be at least 1 second")
    return seconds


def _format_period(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Slot:
    """One schedule slot: ``key`` is what is stored as the last completed slot.

    ``ends`` (Unix time) is when the slot is over (``None`` for an explicit key).
    """

    key: str
    ends: float | None = None

    @classmethod
    def every(cls, period: str | float, now: float | None = None) -> "Slot":
        """The slot containing ``now`` (default: the current wall time) for ``period``."""
        seconds = parse_period(period)
        now = time.time() if now is None else now
        start = math.floor(now / seconds) * seconds
        stamp = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(f"{stamp}/{_format_period(seconds)}", start + seconds)

    @classmethod
    def named(cls, key: str) -> "Slot":
        """An explicit slot key (printable ASCII without spaces, at most 200 characters)."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigurationError(
                f"slot key {key!r} is not usable: use printable ASCII without spaces, at most 200 characters"
            )
        return cls(key)

    @classmethod
    def make(cls, every: str | float | None = None, slot: str | None = None) -> "Slot":
        """From ``every`` (a period) or ``slot`` (a key): exactly one of them."""
        if (every is None) == (slot is None):
            raise ConfigurationError("give either a period (every='1h', --once-per 1h) or a slot key (--slot KEY)")
        return cls.named(slot) if slot is not None else cls.every(every)  # type: ignore[arg-type]

    def done_in(self, record: LeaderRecord | None) -> bool:
        """Is this slot marked completed in ``record``?"""
        return record is not None and not record.decode_error and record.extra.get(LAST_SLOT_KEY) == self.key

    def seconds_left(self) -> float | None:
        return None if self.ends is None else max(0.0, self.ends - time.time())

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class SlotOutcome:
    """What :func:`run_once_per` did: ``ran`` here or not, and whether the slot got ``marked``."""

    slot: str
    ran: bool
    marked: bool
    reason: str
    value: Any = None
    token: int | None = None


def current_leadership() -> Any:
    """The term under which a :func:`once_per` job runs in this thread (``token`` = fencing token)."""
    return getattr(_current, "leadership", None)


def last_slot(record: LeaderRecord | None) -> str | None:
    """The last completed slot stored in ``record``."""
    if record is None or record.decode_error:
        return None
    value = record.extra.get(LAST_SLOT_KEY)
    return value if isinstance(value, str) else None


def run_once_per(
    fn: Callable[[], T],
    *,
    name: str,
    every: str | float | None = None,
    slot: str | None = None,
    wait_timeout: float | None = None,
    **election_options: Any,
) -> SlotOutcome:
    """Call ``fn`` at most once per slot across every candidate of election ``name``.

    ``every`` is the period (``"1h"``) or ``slot`` an explicit key. A candidate that is not
    elected waits, as long as its slot lasts (``wait_timeout`` overrides; for an explicit
    key it waits until the slot is done or it leads), and skips when the slot gets marked.
    ``election_options`` go to :class:`~celery_leader.Election` (``url``, ``backend``,
    ``identity``, timing). An exception from ``fn`` propagates and leaves the slot
    unmarked. ``fn`` should check :func:`current_leadership` (``is_valid()``, ``token``)
    before writes that must not happen after its term.
    """
    from .election import Election

    the_slot = Slot.make(every, slot)
    election = Election(name, **election_options)
    timing = election.timing
    if wait_timeout is None:
        wait_timeout = the_slot.seconds_left()
    give_up = None if wait_timeout is None else time.monotonic() + wait_timeout
    try:
        try:
            seen = election.lock.get(timing.op_timeout)
        except Exception as exc:  # noqa: BLE001 - the election retries; this read only saves a term
            log.debug("%s: first read failed: %s", name, exc)
            seen = None
        if seen is not None and the_slot.done_in(seen.record):
            return _skipped(name, the_slot, seen.record)
        election.start()
        while True:
            if election.wait_until_leader(min(timing.retry_period, 0.5)):
                lead = election.leadership
                if lead is None:  # the term ended at once
                    continue
                if the_slot.done_in(lead.record):
                    return _skipped(name, the_slot, lead.record)
                return _run_slot(fn, name, the_slot, lead)
            if the_slot.done_in(election.record):
                return _skipped(name, the_slot, election.record)
            if give_up is not None and time.monotonic() >= give_up:
                holder = election.leader or "nobody"
                log.info("%s: slot %s: not elected while it lasted (%s leads); giving up", name, the_slot, holder)
                return SlotOutcome(the_slot.key, False, False, f"not elected in time; {holder} leads")
    finally:
        election.stop()


def _skipped(name: str, slot: Slot, record: LeaderRecord | None) -> SlotOutcome:
    log.info("%s: slot %s is already done; skipping", name, slot)
    return SlotOutcome(slot.key, False, True, "already done")


def _run_slot(fn: Callable[[], T], name: str, slot: Slot, lead: Any) -> SlotOutcome:
    log.info("%s: running slot %s with token %d", name, slot, lead.token)
    _current.leadership = lead
    try:
        value = fn()
    except BaseException:
        log.warning("%s: slot %s: the job failed; the slot stays open for another host", name, slot)
        raise
    finally:
        _current.leadership = None
    marked = mark_done(lead, slot)
    return SlotOutcome(slot.key, True, marked, "ran" if marked else "ran, but the term ended before the mark", value, lead.token)


def mark_done(lead: Any, slot: Slot) -> bool:
    """Mark ``slot`` completed in the record while ``lead`` still holds the lock (compare-and-swap)."""
    if lead.is_valid() and lead.set_extra({LAST_SLOT_KEY: slot.key}):
        log.info("%s: slot %s done (token %d)", lead.name, slot, lead.token)
        return True
    log.warning(
        "%s: slot %s ran, but the term ended before it could be marked done; another host may run it again",
        lead.name,
        slot,
    )
    return False


def once_per(
    every: str | float | None = None, *, name: str, slot: str | None = None, **options: Any
) -> Callable[[Callable[..., T]], Callable[..., T | None]]:
    """Decorator: the function runs at most once per slot across all hosts.

    >>> @once_per("1h", name="hourly-report", url="redis://localhost:6379/0")
    ... def report():
    ...     ...
    >>> report()   # from cron on every host: one of them runs it each hour

    The call returns the function's value where it ran and ``None`` where it skipped.
    ``options`` go to :func:`run_once_per`. ``slot`` (an explicit key) instead of ``every``
    is read at call time if it is a callable (e.g. ``slot=lambda: date.today().isoformat()``).
    """
    if callable(slot):
        if every is not None:
            raise ConfigurationError("give either a period or a slot key, not both")
    else:
        Slot.make(every, slot)  # validate at decoration time

    def decorate(fn: Callable[..., T]) -> Callable[..., T | None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T | None:
            key = slot() if callable(slot) else slot
            outcome = run_once_per(lambda: fn(*args, **kwargs), name=name, every=every, slot=key, **options)
            return outcome.value if outcome.ran else None

        return wrapper

    return decorate
