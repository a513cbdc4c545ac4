"""``celery-leader``: run a command only while leader; inspect and move leadership; demo.

``run`` owns the child process. It starts the child when this candidate is elected and
stops it before anybody else can lead: SIGTERM when the term ends (lost, renewals failed
for ``renew_deadline``, step-down, our own SIGTERM), SIGKILL after ``--grace`` but never
later than the lease deadline. The child gets a parent-death signal, so it cannot outlive
a SIGKILLed ``run``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from .election import Election, Leadership
from .lock import ConfigurationError, Conflict, LockError
from .once import Slot, mark_done
from .record import ANY_HOLDER, printable
from .registry import ENV_URL, open_backend

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _child_setup(parent: int) -> None:
    """In the child, before exec: own process group, and die with the parent."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class Runner:
    """Runs the command during each term (called as ``on_started_leading``)."""

    def __init__(
        self, command: Sequence[str], grace: float, on_exit: threading.Event, slot: Slot | None = None
    ) -> None:
        self.command = list(command)
        self.grace = grace
        self.on_exit = on_exit
        self.exit_code: int | None = None
        #: ``--once-per``/``--slot``: skip a slot already done; mark it after a successful run
        self.slot = slot

    def __call__(self, lead: Leadership) -> None:
        if self.slot is not None and self.slot.done_in(lead.record):
            log.info("slot %s is already done; not running %s", self.slot, self.command[0])
            self.exit_code = 0
            self.on_exit.set()
            return
        env = dict(os.environ)
        env.update(
            CELERY_LEADER_TOKEN=str(lead.token),
            CELERY_LEADER_NAME=lead.name,
            CELERY_LEADER_IDENTITY=lead.identity,
        )
        parent = os.getpid()
        try:
            proc = subprocess.Popen(self.command, env=env, preexec_fn=lambda: _child_setup(parent))
        except OSError as exc:
            log.error("cannot start %s: %s", self.command[0], exc)
            self.exit_code = 127
            self.on_exit.set()
            return
        log.info("leading with token %d: started %s (pid %d)", lead.token, self.command[0], proc.pid)
        wake = threading.Event()
        threading.Thread(target=lambda: (proc.wait(), wake.set()), daemon=True).start()
        threading.Thread(target=lambda: (lead.lost.wait(), wake.set()), daemon=True).start()
        wake.wait()
        if proc.poll() is not None and not lead.lost.is_set():
            self.exit_code = proc.returncode
            log.info("%s exited with %s while leading; stepping down", self.command[0], proc.returncode)
            if self.slot is not None:
                if proc.returncode == 0:
                    mark_done(lead, self.slot)
                else:
                    log.warning("slot %s stays open: %s failed", self.slot, self.command[0])
            self.on_exit.set()
            return
        self._stop(proc, lead)

    def _stop(self, proc: subprocess.Popen, lead: Leadership) -> None:
        """SIGTERM, then SIGKILL after ``grace`` and never after the lease deadline."""
        kill_at = min(time.monotonic() + self.grace, lead.deadline)
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(max(0.0, kill_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time: SIGKILL", self.command[0])
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        # reap what the child left in its process group as well
        self._signal(proc, signal.SIGKILL)
        log.info("stopped %s (exit %s)", self.command[0], proc.returncode)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass


def _timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", help="this candidate's identity (default: <hostname>-<pid>-<random>)")
    p.add_argument("--lease-duration", type=float, default=15.0, metavar="S", help="default 15")
    p.add_argument("--renew-deadline", type=float, default=10.0, metavar="S", help="default 10")
    p.add_argument("--retry-period", type=float, default=2.0, metavar="S", help="default 2")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"lock URL (default: ${ENV_URL}, else a file:// directory)")
    p.add_argument("--name", required=True, help="election name")


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigurationError("give the command to run after --, e.g. celery-leader run --name beat -- celery beat")
    slot = Slot.make(args.once_per, args.slot) if args.once_per is not None or args.slot is not None else None
    backend = open_backend(args.url)
    child_exited = threading.Event()
    runner = Runner(command, args.grace, child_exited, slot)
    observer = None
    if args.health_port is not None:
        try:
            from .metrics import ElectionMetrics

            observer = ElectionMetrics.create()
        except ImportError:
            log.info("prometheus-client is not installed: /metrics is off (pip install 'celery-leader[metrics]')")
    election = Election(
        args.name,
        backend=backend,
        identity=args.identity,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        on_started_leading=runner,
        on_new_leader=lambda who: log.info("%s leads %s", printable(who), args.name),
        observer=observer,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.health_port is not None:
        from .health import serve

        server = serve(election, args.health_host, args.health_port, observer)
    log.info("%s standing by for %r on %s", election.identity, args.name, backend.describe())
    if slot is not None and _slot_done_before_start(election, slot):
        backend.close()
        return 0
    election.start()
    while not stop.is_set() and not child_exited.is_set():
        stop.wait(0.2 if slot is not None else 0.5)
        if slot is not None and not election.is_leader and _slot_over(election, slot):
            break
    election.stop()
    if server is not None:
        server.shutdown()
    backend.close()
    return runner.exit_code if child_exited.is_set() and runner.exit_code is not None else 0


def _slot_done_before_start(election: Election, slot: Slot) -> bool:
    try:
        seen = election.lock.get(election.timing.op_timeout)
    except LockError:
        return False  # the election will retry and tell
    if seen is not None and slot.done_in(seen.record):
        log.info("slot %s is already done; nothing to run", slot)
        return True
    return False


def _slot_over(election: Election, slot: Slot) -> bool:
    """A standby with ``--once-per``: stop waiting once the slot is done or has ended."""
    if slot.done_in(election.record):
        log.info("slot %s was done by %s; nothing to run", slot, election.leader or "another candidate")
        return True
    if slot.ends is not None and time.time() >= slot.ends:
        log.info("slot %s ended while %s was leading; not running it", slot, election.leader or "another candidate")
        return True
    return False


def cmd_status(args: argparse.Namespace) -> int:
    backend = open_backend(args.url)
    try:
        got = backend.lock(args.name).get(args.timeout)
    finally:
        backend.close()
    if got is None:
        info: dict[str, object] = {"name": args.name, "holder": None, "state": "no lock object yet"}
    else:
        rec = got.record
        info = {
            "name": args.name,
            "holder": (rec.holder if args.json else printable(rec.holder)) or None,
            "token": rec.transitions,
            "lease_duration": rec.lease_duration,
            "renewed_seconds_ago": round(time.time() - rec.renew_time, 3) if rec.renew_time else None,
            "preferred_holder": (rec.preferred_holder if args.json else printable(rec.preferred_holder)) or None,
            "state": "held" if rec.holder else "free",
        }
        if rec.decode_error:
            info["state"] = f"unreadable: {rec.decode_error}"
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:20} {value}")
    return 0


def cmd_step_down(args: argparse.Namespace) -> int:
    backend = open_backend(args.url)
    lock = backend.lock(args.name)
    try:
        for _ in range(20):
            got = lock.get(args.timeout)
            if got is None or not got.record.holder or got.record.decode_error:
                print(f"nobody leads {args.name}")
                return 0
            old = got.record
            try:
                lock.update(old.evolve(preferred_holder=args.to or ANY_HOLDER), got.version, args.timeout)
                break
            except Conflict:
                continue
        else:
            print("could not mark the record: too many concurrent writes", file=sys.stderr)
            return 1
        print(
            f"asked {printable(old.holder)} (token {old.transitions}) to step down"
            + (f" in favour of {printable(args.to)}" if args.to else "")
        )
        deadline = time.monotonic() + max(old.lease_duration, 1.0) + 2.0
        while time.monotonic() < deadline:
            now = lock.get(args.timeout)
            if now is not None and now.record.holder and now.record.transitions > old.transitions:
                print(f"{printable(now.record.holder)} leads {args.name} (token {now.record.transitions})")
                return 0
            time.sleep(0.05)
        now = lock.get(args.timeout)
        holder = now.record.holder if now else ""
        print(f"no new term within the lease; holder now: {printable(holder) or 'nobody'}")
        return 0 if holder != old.holder else 1
    finally:
        lock.close()
        backend.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celery-leader", description="Leader election for schedulers.")
    parser.add_argument("--log-level", default=os.environ.get("CELERY_LEADER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run a command only while this candidate leads")
    _common_args(run)
    _timing_args(run)
    run.add_argument("--grace", type=float, default=10.0, metavar="S",
                     help="seconds between SIGTERM and SIGKILL (never past the lease deadline)")
    run.add_argument("--once-per", default=None, metavar="PERIOD",
                     help="cron on every host: run at most once per slot of PERIOD (e.g. 1h, 15m, 1d; UTC-aligned) "
                     "across all candidates; a standby exits 0 once the slot is done")
    run.add_argument("--slot", default=None, metavar="KEY",
                     help="like --once-per, with an explicit slot key (e.g. $(date +%%F) for a local day)")
    run.add_argument("--health-port", type=int, default=None, metavar="P", help="serve /healthz and /metrics")
    run.add_argument("--health-host", default="127.0.0.1", help="address for --health-port (default 127.0.0.1)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="print the current holder, token and last renewal")
    _common_args(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)

    step = sub.add_parser("step-down", help="ask the current holder to hand over, and wait for the next term")
    _common_args(step)
    step.add_argument("--to", default=None, metavar="IDENTITY", help="prefer this candidate")
    step.add_argument("--timeout", type=float, default=5.0)
    step.set_defaults(func=cmd_step_down)

    demo = sub.add_parser("demo", help="three candidates on a temporary file:// directory: watch them fail over")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ConfigurationError as exc:
        print(f"celery-leader: configuration error: {exc}", file=sys.stderr)
        return 2
    except LockError as exc:
        print(f"celery-leader: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
