"""``manage.py story``: two of everything, kill the leaders, show who ran what.

Starts two Celery workers, two ``celery beat -S leader`` (django-celery-beat's schedule),
two APScheduler runners (guarded) and, every few seconds, the cron job on two "hosts"
(``runasleader --once-per``). After a third of the time it SIGKILLs the beat and the
APScheduler runner that lead; the standbys take over. At the end it prints every run from
the database with the instance and fencing token, checks that no two instances ever ran
the same kind of work at the same time, and exits non-zero if they did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from demoapp.models import Run
from django_leader.models import Lease
from django_leader.status import row_status

PROJECT = Path(__file__).resolve().parents[3]


class Command(BaseCommand):
    help = "Start two of everything, kill the leaders, and show in the database who ran what and when."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--seconds", type=float, default=45.0, help="how long to run after everything is up")
        parser.add_argument("--quick", action="store_true", help="short leases and intervals (CI smoke test)")
        parser.add_argument("--keep", action="store_true", help="keep the runs of earlier stories")
        parser.add_argument("--logs", default=None, help="directory for the processes' output (default: a temp dir)")

    def handle(self, *args: Any, **options: Any) -> None:
        quick = options["quick"]
        lease, renew, retry = (2.0, 1.2, 0.4) if quick else (6.0, 4.0, 1.0)
        every = 1.0 if quick else 2.0
        cron_every = 3.0 if quick else 6.0
        logs = Path(options["logs"] or tempfile.mkdtemp(prefix="example-story-"))
        logs.mkdir(parents=True, exist_ok=True)

        call_command("migrate", verbosity=0)
        if connection.vendor == "sqlite":
            with connection.cursor() as cur:  # readers and one writer at a time, without blocking readers
                cur.execute("PRAGMA journal_mode=WAL")
        if not options["keep"]:
            Run.objects.all().delete()
        self._schedule(every)

        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "exampleproject.settings"),
            EXAMPLE_LEASE=str(lease),
            EXAMPLE_RENEW=str(renew),
            EXAMPLE_RETRY=str(retry),
            EXAMPLE_QUEUE=f"example-{uuid.uuid4().hex[:8]}",
            PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH", "")])),
        )
        if connection.vendor == "sqlite":
            env["EXAMPLE_SQLITE"] = str(settings.DATABASES["default"]["NAME"])
        celery = [sys.executable, "-m", "celery", "-A", "exampleproject"]
        manage = [sys.executable, str(PROJECT / "manage.py")]
        commands = {
            "worker-a": celery + ["worker", "-P", "solo", "-n", "worker-a@%h", "--without-mingle", "--without-gossip", "-l", "WARNING"],
            "worker-b": celery + ["worker", "-P", "solo", "-n", "worker-b@%h", "--without-mingle", "--without-gossip", "-l", "WARNING"],
            "beat-a": celery + ["beat", "-S", "leader", "--max-interval", "1", "-l", "INFO", "-s", str(logs / "beat-a")],
            "beat-b": celery + ["beat", "-S", "leader", "--max-interval", "1", "-l", "INFO", "-s", str(logs / "beat-b")],
            "aps-a": manage + ["runapscheduler", "--every", str(every)],
            "aps-b": manage + ["runapscheduler", "--every", str(every)],
        }  # fmt: skip
        procs: dict[str, subprocess.Popen] = {}

        def spawn(name: str, argv: list[str]) -> subprocess.Popen:
            out = open(logs / f"{name}.log", "ab")
            proc = subprocess.Popen(
                argv, cwd=PROJECT, env={**env, "EXAMPLE_INSTANCE": name}, stdout=out, stderr=subprocess.STDOUT
            )
            out.close()
            return proc

        self.stdout.write(f"logs in {logs}")
        cron: list[subprocess.Popen] = []
        try:
            for name, argv in commands.items():
                procs[name] = spawn(name, argv)
            self._wait_for_first_runs(procs, timeout=90.0)
            self.stdout.write("everything is up; the leaders are: " + ", ".join(self._holders()))
            started = time.monotonic()
            next_cron = started
            killed = False
            # run for --seconds, and on (at most a minute more) until the story has something to
            # show: a takeover of each killed leader and a cron run (a loaded machine starts slowly)
            while time.monotonic() - started < options["seconds"] or (
                time.monotonic() - started < options["seconds"] + 60 and not self._told(killed)
            ):
                now = time.monotonic()
                if now >= next_cron:
                    next_cron += cron_every
                    for host in ("cron-a", "cron-b"):
                        argv = manage + ["runasleader", "--once-per", f"{cron_every:g}s", "nightly"]
                        cron.append(spawn(host, argv))
                if not killed and now - started > options["seconds"] / 3:
                    killed = True
                    for election in ("example.beat", "example.apscheduler"):
                        holder = self._holder(election)
                        if holder in procs:
                            procs[holder].kill()
                            self.stdout.write(f"{time.strftime('%H:%M:%S')} SIGKILL {holder}, the leader of {election}")
                for proc in list(procs.values()):
                    if proc.poll() is not None and proc.returncode not in (-signal.SIGKILL,):
                        raise CommandError(f"a process exited early with {proc.returncode}; see {logs}")
                time.sleep(0.1)
        finally:
            for proc in [*procs.values(), *cron]:
                if proc.poll() is None:
                    proc.terminate()
            for proc in [*procs.values(), *cron]:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._report(logs)

    def _told(self, killed: bool) -> bool:
        """Whether the runs so far show a takeover after the kill, and a cron run."""
        if not killed:
            return False
        seen = {
            kind: set(Run.objects.filter(kind=kind).values_list("instance", flat=True))
            for kind in ("beat", "apscheduler", "cron")
        }
        return len(seen["beat"]) >= 2 and len(seen["apscheduler"]) >= 2 and bool(seen["cron"])

    # --- setup ---------------------------------------------------------------------------

    def _schedule(self, every: float) -> None:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        interval, _ = IntervalSchedule.objects.get_or_create(every=max(1, int(every)), period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(
            name="example: record a beat run",
            defaults={"task": "demoapp.tasks.record_beat", "interval": interval, "enabled": True},
        )

    def _wait_for_first_runs(self, procs: dict[str, subprocess.Popen], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kinds = set(Run.objects.values_list("kind", flat=True).distinct())
            if {"beat", "apscheduler"} <= kinds:
                return
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise CommandError(f"{', '.join(dead)} exited during start-up")
            time.sleep(0.2)
        raise CommandError(
            f"no beat and APScheduler runs within {timeout:.0f} s (is Redis at {settings.CELERY_BROKER_URL}?)"
        )

    def _holder(self, election: str) -> str | None:
        row = Lease.objects.filter(name=election).values_list("name", "record", "version").first()
        return row_status(*row)["holder"] if row else None

    def _holders(self) -> list[str]:
        return [f"{e}={self._holder(e)}" for e in ("example.beat", "example.apscheduler")]

    # --- the report ----------------------------------------------------------------------

    def _report(self, logs: Path) -> None:
        runs = list(Run.objects.order_by("at", "id"))
        self.stdout.write(f"\n{'time':<15} {'kind':<12} {'instance':<10} {'token':>5}  executed by")
        for run in runs:
            self.stdout.write(
                f"{run.at:%H:%M:%S.%f}"[:15] + f" {run.kind:<12} {run.instance:<10} {run.token!s:>5}  {run.worker}"
            )
        problems: list[str] = []
        for kind in ("beat", "apscheduler", "cron"):
            mine = [r for r in runs if r.kind == kind]
            terms: dict[Any, tuple[str, float, float]] = {}
            for r in mine:
                t = r.at.timestamp()
                who, first, last = terms.get(r.token, (r.instance, t, t))
                if who != r.instance:
                    problems.append(f"{kind}: token {r.token} used by {who} and {r.instance}")
                terms[r.token] = (who, min(first, t), max(last, t))
            ordered = sorted(terms.items(), key=lambda item: item[1][1])
            tokens = [token for token, _ in ordered]
            if any(tok is None for tok in tokens) or tokens != sorted(tokens):
                problems.append(f"{kind}: tokens not increasing over time: {tokens}")
            if kind != "beat":  # beat tasks run on workers later; their order may interleave
                for (tok_a, (_, _, end_a)), (tok_b, (_, start_b, _)) in zip(ordered, ordered[1:]):
                    if start_b < end_a:
                        problems.append(f"{kind}: token {tok_b} started before token {tok_a} ended")
            self.stdout.write(
                f"{kind}: {len(mine)} runs by "
                + (", ".join(f"{who} (token {tok})" for tok, (who, _, _) in ordered) or "nobody")
            )
        for kind in ("beat", "apscheduler"):
            if len({r.instance for r in runs if r.kind == kind}) < 2:
                problems.append(f"{kind}: no takeover seen after the leader was killed")
        cron_ticks = [r for r in runs if r.kind == "cron"]
        if not cron_ticks:
            problems.append("cron: the job never ran")
        if problems:
            raise CommandError("the story went wrong:\n  " + "\n  ".join(problems) + f"\nlogs: {logs}")
        self.stdout.write("OK: one instance at a time for every kind of work, tokens increasing, takeovers seen")
