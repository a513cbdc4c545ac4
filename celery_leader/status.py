"""What ``celery-leader status`` reports: held / expired / free, judged honestly.

A single read cannot observe expiry: the engine judges it by watching the record stay
unchanged for a lease on its own clock. ``status`` offers both ways and says which one
it used (``judged``):

* ``"wall clock"`` (one read, the default): the record's ``renewTime`` plus its lease
  compared with this host's clock. Quick, and right when the clocks agree; a holder whose
  clock is behind ours by more than the margin shows as expired too early, and one ahead
  shows as held too long. Never used for any decision, only for this report.
* ``"observed"`` (``--wait``, and ``--watch`` after the first lease): the record watched
  for up to one lease; a change (a renewal) means held, none means expired. This is how
  the candidates themselves decide.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from .lock import Lock, Versioned
from .once import last_slot
from .record import printable

__all__ = ["LockStatus", "describe", "observe", "watch", "VANISHED_HOLDERS"]

#: placeholder holders backends report for a lock object that vanished while its fence
#: remains (the ``VANISHED_HOLDER`` of ``celery_leader.backends.redis``/``etcd``, ``file``,
#: ``zookeeper`` and ``sql``, the last shared by postgresql:// and django://): not anybody's
#: identity. Spelled out here so that status imports no backend's driver.
VANISHED_HOLDERS = frozenset({"(lock key vanished)", "(lease file vanished)", "(lock node vanished)", "(lease row deleted)"})

_UNSEEN = object()

#: wall-clock judgement: a record counts as expired this long after renewTime + lease
WALL_CLOCK_MARGIN = 1.0


@dataclass
class LockStatus:
    """One line of ``status``; the ``--json`` fields, documented in docs/cli.md."""

    name: str
    #: "held", "expired", "free" or "unreadable"
    state: str
    #: who holds (held), or held last (expired); None when free
    holder: str | None
    #: the fencing token of the current (or last) term
    token: int | None
    #: the holder's lease, seconds
    lease_duration: float | None
    #: this host's clock minus the record's renewTime, seconds (null if none)
    renewed_seconds_ago: float | None
    #: "wall clock" or "observed" (see the module docstring)
    judged: str
    #: False when no lock object exists (yet, or any more)
    exists: bool
    preferred_holder: str | None = None
    #: the last slot marked done by --once-per / once_per()
    last_slot: str | None = None
    #: why the lock is free or unreadable, in words (a vanished key, garbage)
    note: str | None = None

    def line(self) -> str:
        """One human line: ``held by X (token 4), renewed 1.2 s ago, lease 15 s``."""
        who = printable(self.holder or "")
        if self.state == "held":
            text = f"held by {who} (token {self.token})"
        elif self.state == "expired":
            text = f"expired: {who} (token {self.token}) stopped renewing"
        elif self.state == "free":
            text = "free" + (f" (last token {self.token})" if self.token else "")
        else:
            text = "unreadable"
        if self.renewed_seconds_ago is not None and self.state in ("held", "expired"):
            text += f", renewed {self.renewed_seconds_ago:.1f} s ago, lease {self.lease_duration:g} s"
        if self.state in ("held", "expired"):
            text += f" [{self.judged}]"
        if self.preferred_holder:
            text += f", asked to step down (preferred: {printable(self.preferred_holder)})"
        if self.last_slot:
            text += f", last slot done: {printable(self.last_slot)}"
        if self.note:
            text += f" ({self.note})"
        return text

    def as_json(self) -> str:
        return json.dumps(asdict(self))


def describe(name: str, got: Versioned | None, now: float | None = None, *, observed: bool | None = None) -> LockStatus:
    """The status of one read. ``observed``: None = judge by wall clock; True = seen renewed
    within a lease (held); False = seen unchanged for a lease (expired)."""
    now = time.time() if now is None else now
    if got is None:
        return LockStatus(name, "free", None, None, None, None, "wall clock", False, note="no lock object")
    rec = got.record
    ago = round(now - rec.renew_time, 3) if rec.renew_time else None
    common = dict(
        token=rec.transitions,
        lease_duration=rec.lease_duration,
        renewed_seconds_ago=ago,
        exists=True,
        preferred_holder=rec.preferred_holder or None,
        last_slot=last_slot(rec),
    )
    if rec.decode_error:
        return LockStatus(name, "unreadable", None, judged="wall clock", note=rec.decode_error, **common)  # type: ignore[arg-type]
    if rec.holder in VANISHED_HOLDERS:
        common.update(exists=False, lease_duration=None, renewed_seconds_ago=None)
        return LockStatus(
            name, "free", None, judged="wall clock",
            note="the lock object vanished; candidates wait one lease before taking it", **common,  # type: ignore[arg-type]
        )  # fmt: skip
    if not rec.holder:
        return LockStatus(name, "free", None, judged="wall clock", **common)  # type: ignore[arg-type]
    if observed is None:
        expired = ago is not None and ago > rec.lease_duration + WALL_CLOCK_MARGIN
        judged = "wall clock"
    else:
        expired, judged = not observed, "observed"
    return LockStatus(name, "expired" if expired else "held", rec.holder, judged=judged, **common)  # type: ignore[arg-type]


def _wait_for_change(lock: Lock, version: str | None, timeout: float, poll: float) -> None:
    if type(lock).capabilities.watch:
        try:
            lock.wait_for_change(version, timeout)
            return
        except Exception:  # noqa: BLE001 - a failed watch is only a poll
            pass
    time.sleep(min(timeout, poll))


def observe(name: str, lock: Lock, timeout: float, poll: float = 0.5) -> LockStatus:
    """Read, and if held, watch for up to one lease: renewed = held, unchanged = expired."""
    first = lock.get(timeout)
    status = describe(name, first)
    if status.state not in ("held", "expired") or first is None:
        return status
    lease = first.record.lease_duration or 15.0
    until = time.monotonic() + lease
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return describe(name, first, observed=False)
        _wait_for_change(lock, first.version, left, poll)
        now = lock.get(timeout)
        if now is None or now.version != first.version:
            if now is not None and now.record.holder == first.record.holder and not now.record.decode_error:
                return describe(name, now, observed=True)
            return describe(name, now)  # it changed hands or was released: report the new record


def watch(name: str, lock: Lock, timeout: float, emit: Any, stop: Any, poll: float = 1.0) -> None:
    """Call ``emit(status, error)`` whenever the state, holder, token, preference or last slot
    changes, including when a held lease is seen unchanged for a whole lease (expired,
    observed). Renewals alone emit nothing. Runs until ``stop`` (an Event) is set.

    The first line is judged by wall clock; from then on by observation: renewed since we
    started watching = held, unchanged for a lease = expired.
    """
    last_key: tuple | None = None
    version: Any = _UNSEEN
    first_seen = time.monotonic()
    changed_at: float | None = None
    while not stop.is_set():
        try:
            got = lock.get(timeout)
        except Exception as exc:  # noqa: BLE001 - an outage is a state worth showing
            key: tuple = ("unreachable", str(exc))
            if key != last_key:
                emit(None, str(exc))
                last_key = key
            stop.wait(poll)
            continue
        now = time.monotonic()
        current = got.version if got is not None else None
        if current != version:
            if version is not _UNSEEN:
                changed_at = now
            version = current
        lease = got.record.lease_duration if got is not None and got.record.lease_duration > 0 else 15.0
        since = changed_at if changed_at is not None else first_seen
        observed: bool | None
        if now - since >= lease:
            observed = False
        elif changed_at is not None:
            observed = True
        else:
            observed = None
        status = describe(name, got, observed=observed)
        key = (status.state, status.holder, status.token, status.preferred_holder, status.last_slot, status.note)
        if key != last_key:
            emit(status, None)
            last_key = key
        wait = poll
        if status.state == "held":
            wait = max(0.05, min(poll * 5, since + lease - now))
        if not stop.is_set():
            _wait_for_change(lock, current, wait, poll)
