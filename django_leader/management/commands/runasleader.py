"""``manage.py runasleader [--name NAME] [--wait | --skip | --once-per PERIOD | --slot KEY] COMMAND [ARGS...]``.

Runs another management command in this process, only while this instance leads the
election ``NAME`` (default ``<LEADER_ELECTION['NAME']>.<COMMAND>``), renewing the lease in
a background thread. ``--once-per 1h`` (cron on every host) runs the command at most once per
hourly slot across all hosts (see :mod:`celery_leader.once`). Exit status: the command's own (0 on success), 0 when ``--skip`` finds
another leader or the ``--once-per`` slot is already done, 3 when leadership was lost while the command ran (it is interrupted, see
:mod:`django_leader.runner`), 4 when ``--wait-timeout`` passed without being elected, 143 after
SIGTERM (the command is unwound and the lease released).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from celery_leader.lock import ConfigurationError, LockError
from celery_leader.once import Slot

from ...conf import SettingsError, leader_settings
from ...runner import EXIT_LOST, EXIT_NOT_ELECTED, LeadershipLost, NotLeader, run_as_leader


class Command(BaseCommand):
    help = "Run a management command only on the elected leader (renewing the lease while it runs)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", help="election name (default: <LEADER_ELECTION NAME>.<COMMAND>)")
        parser.add_argument("--identity", help="this candidate's identity (default: <hostname>-<pid>-<random>)")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--wait", action="store_true", help="wait until elected (the default)")
        mode.add_argument("--skip", action="store_true", help="exit 0 at once if another instance leads")
        mode.add_argument(
            "--once-per",
            metavar="PERIOD",
            help="cron on every host: run at most once per slot of PERIOD (e.g. 1h, 15m, 1d; UTC-aligned) across "
            "all hosts; exit 0 when the slot is already done",
        )
        mode.add_argument("--slot", metavar="KEY", help="like --once-per, with an explicit slot key")
        parser.add_argument(
            "--wait-timeout",
            type=float,
            default=None,
            help=f"with --wait: give up after S seconds (exit {EXIT_NOT_ELECTED})",
        )
        parser.add_argument(
            "--hold",
            type=float,
            default=0.0,
            help="keep the lease until S seconds after the command started, so that instances started a little "
            "later skip a fast job (cron on hosts with skewed clocks)",
        )
        parser.add_argument("command_name", metavar="COMMAND", help="the management command to run")
        parser.add_argument("command_args", metavar="ARGS", nargs=argparse.REMAINDER, help="its arguments")

    def handle(self, *args: Any, **options: Any) -> None:
        command = options["command_name"]
        command_args = list(options["command_args"])
        if command_args[:1] == ["--"]:
            command_args = command_args[1:]
        if command == "runasleader":
            raise CommandError("runasleader cannot run itself")
        try:
            conf = leader_settings()
        except SettingsError as exc:
            raise CommandError(str(exc)) from exc
        name = options["name"] or f"{conf.name}.{command}"
        if options["skip"] and options["wait_timeout"] is not None:
            raise CommandError("--wait-timeout applies to --wait, not --skip")
        try:
            slot = None
            if options["once_per"] is not None or options["slot"] is not None:
                slot = Slot.make(options["once_per"], options["slot"])
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        try:
            run_as_leader(
                lambda: call_command(command, *command_args),
                name=name,
                skip=options["skip"],
                wait_timeout=options["wait_timeout"],
                identity=options["identity"],
                hold=options["hold"],
                slot=slot,
            )
        except NotLeader as exc:
            if exc.skipped:
                if options["verbosity"] >= 1:
                    self.stdout.write(f"skipped {command}: {exc}")
                return
            raise CommandError(str(exc), returncode=EXIT_NOT_ELECTED) from exc
        except LeadershipLost as exc:
            raise CommandError(f"{command} interrupted: {exc}", returncode=EXIT_LOST) from None
        except ConfigurationError as exc:
            raise CommandError(f"leader election is misconfigured: {exc}") from exc
        except LockError as exc:
            raise CommandError(f"lock backend failed: {exc}") from exc
