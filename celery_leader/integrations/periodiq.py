"""Dramatiq + periodiq: several ``periodiq`` schedulers, one of them sends.

periodiq is one process that wakes at every minute in which a periodic actor is due and
sends it; two of them send everything twice, and a restarted one sends the current
minute's actors again at start-up. ``celery-leader-periodiq`` is the ``periodiq`` command
(same arguments) whose sends happen only while it leads an election::

    celery-leader-periodiq app.broker app.tasks --leader-url redis://localhost:6379/0

or, from code, ``LeaderPeriodiq(actors, url=...).run()``.

* The election runs in its own thread, started by :meth:`LeaderPeriodiq.run` (not at import).
* Fail closed: leadership is confirmed right before each message is sent.
* Messages keep periodiq's ``scheduled_at`` option (its worker middleware reads it) and
  carry ``celery_leader_token``, ``celery_leader_slot`` and ``celery_leader_election``
  options; :func:`message_token` / :func:`message_slot` read them (with Dramatiq's
  ``CurrentMessage`` middleware, ``message_token(CurrentMessage.get_current_message())``).
* Once per slot across leaders: before sending a minute's actors the leader writes that
  minute into the lock record (extra key ``celeryLeaderPeriodiqSlot``, with the lock's own
  compare-and-swap, :meth:`Leadership.set_extra`). A new leader reads it with the record it
  acquired, so it sends the minute under way at once if its predecessor had not, and
  never one its predecessor had started.
* SIGTERM and SIGINT stop the loop and release the lock (periodiq itself dies on SIGTERM
  without any shutdown).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any

import pendulum

from ..election import Election, Leadership
from ..errors import CeleryLeaderError, ConfigurationError
from ._queues import LeaderSettings

__all__ = ["LeaderPeriodiq", "message_token", "message_slot", "main", "OPTION_TOKEN", "OPTION_SLOT"]

log = logging.getLogger(__name__)

OPTION_TOKEN = "celery_leader_token"
OPTION_SLOT = "celery_leader_slot"
OPTION_ELECTION = "celery_leader_election"
#: the lock record's extra key holding the last slot a leader started to send
SLOT_KEY = "celeryLeaderPeriodiqSlot"


def _options(message: Any) -> dict[str, Any]:
    options = getattr(message, "options", None)
    return options if isinstance(options, dict) else {}


def message_token(message: Any) -> int | None:
    """The fencing token a Dramatiq message was sent under (``None``: not sent by a leader)."""
    value = _options(message).get(OPTION_TOKEN)
    if isinstance(value, bool):
        return None
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def message_slot(message: Any) -> str | None:
    """The schedule slot (ISO 8601, periodiq's local time) a message was sent for."""
    value = _options(message).get(OPTION_SLOT)
    return value if isinstance(value, str) else None


def slot_start(now: Any, seconds: int) -> Any:
    """The start of the ``seconds``-long slot (a divisor of 60) that contains ``now``."""
    now = now.replace(microsecond=0)
    return now.subtract(seconds=now.second % seconds)


class LeaderPeriodiq:
    """periodiq's scheduler loop, sending only while this process leads ``name``.

    ``actors``: Dramatiq actors declared with ``periodic=cron(...)``. Election options as
    for every integration (``url``, ``name``, ``identity``, ``lease_duration``,
    ``renew_deadline``, ``retry_period``). ``slot_seconds`` (60, periodiq's resolution) is
    how often the schedule is evaluated; lower values are for tests.
    """

    def __init__(self, actors: list[Any], *, url: str | None = None, name: str = "periodiq",
                 identity: str | None = None, lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, slot_seconds: int = 60) -> None:  # fmt: skip
        if not actors:
            raise ConfigurationError("no periodic actor to schedule: declare actors with periodic=cron('...')")
        missing = [getattr(a, "actor_name", repr(a)) for a in actors if "periodic" not in getattr(a, "options", {})]
        if missing:
            raise ConfigurationError(f"actors without a periodic= option: {', '.join(missing)}")
        if not isinstance(slot_seconds, int) or slot_seconds < 1 or 60 % slot_seconds:
            raise ConfigurationError(f"slot_seconds must divide 60 (1, 2, 5, 10, 30, 60...), got {slot_seconds!r}")
        self.actors = list(actors)
        self.slot_seconds = slot_seconds
        self.leader = LeaderSettings.build(name=name, url=url, identity=identity, lease_duration=lease_duration,
                                           renew_deadline=renew_deadline, retry_period=retry_period)  # fmt: skip
        self.election: Election | None = None
        self._stop = threading.Event()
        self._sent: tuple[int, Any] | None = None  # (token, last slot sent in that term)

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> Election:
        """Start the election (its own thread). ``run()`` calls it."""
        if self.election is None:
            election = Election(self.leader.name, **self.leader.election_kwargs(),
                                on_started_leading=self._started, on_new_leader=self._new_leader)  # fmt: skip
            election.start()
            self.election = election
            log.info("celery-leader: periodiq %s standing for %s on %s", self.leader.identity, self.leader.name,
                     self.leader.describe)  # fmt: skip
        return self.election

    def stop(self) -> None:
        """Stop the loop (safe from a signal handler); ``run()`` then releases the lock."""
        self._stop.set()

    def run(self, *, install_signals: bool = True) -> None:
        """Evaluate the schedule at every slot until stopped; release the lock on the way out."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.start()
        try:
            while not self._stop.is_set():
                # at each slot boundary, and every retry period in between: a new leader
                # sends the slot under way at once if nobody did
                now = pendulum.now()
                boundary = slot_start(now, self.slot_seconds).add(seconds=self.slot_seconds)
                wait = min((boundary - now).total_seconds(), self.leader.timing.retry_period)
                if self._stop.wait(max(0.0, wait)):
                    break
                try:
                    self.tick(slot_start(pendulum.now(), self.slot_seconds))
                except Exception:  # noqa: BLE001 - never let the loop die; fail closed
                    log.exception("celery-leader: sending periodic actors failed; trying again next slot")
        finally:
            self.close()

    def close(self) -> None:
        election, self.election = self.election, None
        if election is not None:
            log.info("celery-leader: periodiq stopping; releasing %s", self.leader.name)
            election.stop()

    def _started(self, leadership: Leadership) -> None:
        log.info("celery-leader: sending periodic actors (token %d)", leadership.token)

    def _new_leader(self, identity: str) -> None:
        if identity != self.leader.identity:
            log.info("celery-leader: %s now sends the periodic actors of %s", identity, self.leader.name)

    # --- one slot --------------------------------------------------------------------

    def tick(self, slot: Any) -> int:
        """Send the actors due in ``slot`` if leading and no leader started it; returns how many."""
        election = self.election
        lead = election.leadership if election is not None else None
        if lead is None:
            return 0
        if self._sent is not None and self._sent[0] == lead.token and slot <= self._sent[1]:
            return 0
        key = slot.in_timezone("UTC").strftime(_MARK_FORMAT)
        marked = _marked(lead)
        if marked is not None and marked >= key:
            self._sent = (lead.token, slot)
            return 0
        due = [a for a in self.actors if a.options["periodic"].validate(slot)]
        if not due:
            return 0
        # write-ahead, with the lock's compare-and-swap: lands only while this term holds
        if not lead.set_extra({SLOT_KEY: key}, timeout=self.leader.timing.renew_deadline):
            log.warning("celery-leader: not sending slot %s: leadership ended before it was marked", slot)
            return 0
        self._sent = (lead.token, slot)
        sent = 0
        for actor in due:
            if not lead.is_valid():  # right before each message (fail closed)
                log.warning("celery-leader: leadership ended; not sending %s", actor.actor_name)
                break
            log.info("Scheduling %s at %s (token %d).", actor, slot, lead.token)
            actor.send_with_options(
                scheduled_at=str(slot),
                **{OPTION_TOKEN: lead.token, OPTION_SLOT: slot.isoformat(), OPTION_ELECTION: lead.name},
            )
            sent += 1
        return sent


def _marked(lead: Leadership) -> str | None:
    """The last slot a leader of this election started to send, from the lock record."""
    record = getattr(lead, "record", None)
    value = (getattr(record, "extra", None) or {}).get(SLOT_KEY)
    if not isinstance(value, str) or len(value) != len(_MARK_EXAMPLE):
        return None
    try:  # anything but a slot (garbage compares above every real one) would stop sending for good
        datetime.strptime(value, _MARK_FORMAT)
    except ValueError:
        return None
    return value


_MARK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MARK_EXAMPLE = "2026-01-01T00:00:00Z"


def _parser() -> argparse.ArgumentParser:
    from periodiq import make_argument_parser

    parser = make_argument_parser()
    parser.prog = "celery-leader-periodiq"
    parser.description = "Run periodiq's scheduler; only the leader of the election sends."
    group = parser.add_argument_group("leader election (celery-leader)")
    group.add_argument("--leader-url", help="lock URL (default: $CELERY_LEADER_URL)")
    group.add_argument("--leader-name", default="periodiq", help="election name (default: periodiq)")
    group.add_argument("--leader-identity", help="this scheduler's identity")
    group.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    group.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    group.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    group.add_argument("--slot-seconds", type=int, default=60, help="evaluate the schedule every N s (tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``celery-leader-periodiq BROKER [MODULE...]``: periodiq, sending only while leading."""
    from dramatiq.cli import LOGFORMAT, VERBOSITY, import_broker

    args = _parser().parse_args(argv)
    logging.basicConfig(level=VERBOSITY.get(args.verbose, logging.DEBUG), format=LOGFORMAT)
    for path in args.path if isinstance(args.path, list) else [args.path]:
        sys.path.insert(0, path)
    try:
        _, broker = import_broker(args.broker)
        for module in args.modules:
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"celery-leader-periodiq: cannot import {args.broker!r} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    actors = [a for a in broker.actors.values() if "periodic" in a.options]
    try:
        scheduler = LeaderPeriodiq(
            actors, url=args.leader_url, name=args.leader_name, identity=args.leader_identity,
            lease_duration=args.lease_duration, renew_deadline=args.renew_deadline, retry_period=args.retry_period,
            slot_seconds=args.slot_seconds,
        )  # fmt: skip
        for actor in actors:
            log.info("periodic actor %s: %s", actor.actor_name, actor.options["periodic"])
        scheduler.run()
    except CeleryLeaderError as exc:
        print(f"celery-leader-periodiq: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from celery_leader.integrations.periodiq import main as _main

    sys.exit(_main())
