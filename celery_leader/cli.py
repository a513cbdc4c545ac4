"""``celery-leader``: run a command only while leader; inspect and move leadership; demo.

``run`` owns the whole process tree of its command. For every term it starts a small
supervisor (:mod:`celery_leader.supervise`: a child subreaper that dies with ``run``),
which starts the command in a process group of its own. The tree is stopped before
anybody else can lead: SIGTERM when the term ends (lost, renewals failed for
``renew_deadline``, step-down, our own SIGTERM/SIGINT/SIGHUP), SIGKILL of the group and of
every other descendant after ``--grace`` but never later than the lease deadline. When the
command exits by itself, what it left behind is stopped before the lock is released. When
``run`` is SIGKILLed, the supervisor's parent-death signal takes the tree with it. SIGTSTP
(Ctrl-Z) ends the term and stops the command before ``run`` stops itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import supervise
from .core import validate_identity
from .election import Election, Leadership
from .lock import ConfigurationError, Conflict, LockError, partition_warning
from .once import Slot, mark_done
from .record import ANY_HOLDER, printable
from .registry import ENV_URL, ENV_URL_FILE, default_url, open_backend, read_url_file
from .supervise import KILL_TREE
from .urls import scrub

log = logging.getLogger(__name__)

#: how long ``run`` waits for the supervisor to report its command's process group
START_TIMEOUT = 30.0


def shell_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


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
        self._gate = threading.Lock()
        self._active = 0

    @property
    def busy(self) -> bool:
        """A term's command (or its supervisor) is running or being stopped."""
        with self._gate:
            return self._active > 0

    # --- a term ---

    def __call__(self, lead: Leadership) -> None:
        if self.slot is not None and self.slot.done_in(lead.record):
            log.info("slot %s is already done; not running %s", self.slot, self.command[0])
            self.exit_code = 0
            self.on_exit.set()
            return
        env = dict(os.environ)
        env.pop(ENV_URL, None)  # the lock URL may hold a password: the command does not need it
        env.update(
            CELERY_LEADER_TOKEN=str(lead.token),
            CELERY_LEADER_NAME=lead.name,
            CELERY_LEADER_IDENTITY=lead.identity,
        )
        with self._gate:
            self._active += 1
        try:
            self._run(lead, env)
        finally:
            with self._gate:
                self._active -= 1

    def _run(self, lead: Leadership, env: dict[str, str]) -> None:
        report_r, report_w = os.pipe()
        argv = [
            sys.executable, "-I", "-S", supervise.__file__, "--parent", str(os.getpid()),
            "--grace", repr(self.grace), "--report", str(report_w), "--", *self.command,
        ]  # fmt: skip
        try:
            # its own process group: terminal signals reach run, which decides
            proc = subprocess.Popen(argv, env=env, pass_fds=(report_w,), **_own_group())
        except OSError as exc:
            log.error("cannot start the supervisor for %s: %s", self.command[0], exc)
            self.exit_code = 127
            self.on_exit.set()
            return
        finally:
            os.close(report_w)
        group = self._read_group(report_r, proc)
        if group is None and proc.poll() is None:
            log.error("the supervisor of %s did not start it in time; stopping it", self.command[0])
        else:
            log.info("leading with token %d: started %s (pid %s)", lead.token, self.command[0], group)
        wake = threading.Event()
        threading.Thread(target=_then_set, args=(proc.wait, wake), daemon=True).start()
        threading.Thread(target=_then_set, args=(lead.lost.wait, wake), daemon=True).start()
        if group is not None:
            wake.wait()
        if proc.poll() is not None and not lead.lost.is_set():
            # the command exited by itself; the supervisor has stopped what it left behind
            self.exit_code = shell_status(proc.returncode)
            log.info("%s exited with %s while leading; stepping down", self.command[0], self.exit_code)
            if self.slot is not None:
                if proc.returncode == 0:
                    mark_done(lead, self.slot)
                else:
                    log.warning("slot %s stays open: %s failed", self.slot, self.command[0])
            self.on_exit.set()
            return
        self._stop(proc, group, lead)

    @staticmethod
    def _read_group(fd: int, proc: subprocess.Popen) -> int | None:
        """The command's pid (= its process group), as the supervisor reports it."""
        data = b""
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while b"\n" not in data and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    chunk = os.read(fd, 64)
                    if not chunk:
                        break  # the supervisor exited (or could not start the command)
                    data += chunk
                elif proc.poll() is not None:
                    break
        finally:
            os.close(fd)
        try:
            return int(data.split(b"\n", 1)[0])
        except ValueError:
            return None

    def _stop(self, proc: subprocess.Popen, group: int | None, lead: Leadership) -> None:
        """SIGTERM to the tree, then SIGKILL after ``grace`` and never after the lease deadline."""
        kill_at = min(time.monotonic() + self.grace, lead.deadline)
        self._signal(proc.pid, signal.SIGTERM)  # the supervisor forwards it to the whole tree
        try:
            proc.wait(max(0.0, kill_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time: SIGKILL", self.command[0])
            if group is not None:
                with contextlib.suppress(OSError):
                    os.killpg(group, signal.SIGKILL)  # at once, by our own hand
            self._signal(proc.pid, KILL_TREE)  # the supervisor kills the rest and exits
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - a supervisor that does not react
                proc.kill()
                proc.wait()
        log.info("stopped %s (exit %s)", self.command[0], shell_status(proc.returncode))

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _own_group() -> dict[str, Any]:
    """Popen options for a process group of its own (``process_group`` is Python 3.11+)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": lambda: os.setpgid(0, 0)}  # pragma: no cover - Python 3.10


def _then_set(wait: Callable[[], object], event: threading.Event) -> None:
    """In a helper thread: wait for something, then wake whoever waits on ``event``."""
    wait()
    event.set()


def _grace(text: str) -> float:
    """``--grace``: finite seconds, 0 <= grace <= one day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grace must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"--grace must be finite seconds between 0 and 86400, got {text!r}")
    return value


def _seconds(option: str, minimum: float = 0.0, maximum: float = 86400.0):  # type: ignore[no-untyped-def]
    """An argparse type: finite seconds in ``[minimum, maximum]`` (``nan``/``inf`` refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number of seconds, got {text!r}") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{option} must be finite seconds from {minimum:g} to {maximum:g}, got {text!r}"
            )
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--health-port must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--health-port must be a port number from 0 to 65535, got {text!r}")
    return value


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = str(text).strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(
            f"--log-level (or $CELERY_LEADER_LOG_LEVEL) must be one of {', '.join(_LEVELS)}, got {text!r}"
        )
    return level


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", help="this candidate's identity (default: <hostname>-<pid>-<random>)")
    p.add_argument("--lease-duration", type=float, default=15.0, metavar="S", help="default 15")
    p.add_argument("--renew-deadline", type=float, default=10.0, metavar="S", help="default 10")
    p.add_argument("--retry-period", type=float, default=2.0, metavar="S", help="default 2")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None,
        help=f"lock URL (default: ${ENV_URL}, else the file ${ENV_URL_FILE} names, else a file:// directory); "
        "a URL with a password is visible in ps: prefer --url-file",
    )  # fmt: skip
    p.add_argument("--url-file", default=None, metavar="PATH", help="read the lock URL from this file (a mounted secret)")
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

    def make_election(identity: str | None) -> Election:
        return Election(
            args.name,
            backend=backend,
            identity=identity,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
            on_started_leading=runner,
            on_new_leader=lambda who: log.info("%s leads %s", printable(who), args.name),
            observer=observer,
        )

    election = make_election(args.identity)
    current = _Current(election)  # what /healthz reports, also after a SIGTSTP/SIGCONT
    stop = threading.Event()
    pause = threading.Event()
    wake = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        wake.set()

    def on_tstp(signum: int, frame: object) -> None:
        pause.set()
        wake.set()

    # SIGHUP is a SIGTERM: the command gets SIGTERM and its grace, the lock is released
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGTSTP, on_tstp)
    server = None
    if args.health_port is not None:
        from .health import serve

        server = serve(current, args.health_host, args.health_port, observer)
    log.info("%s standing by for %r on %s", election.identity, args.name, backend.describe())
    if slot is not None and _slot_done_before_start(election, slot):
        backend.close()
        return 0
    election.start()
    threading.Thread(target=_then_set, args=(child_exited.wait, wake), daemon=True).start()
    slot_exit: int | None = None
    while not stop.is_set() and not child_exited.is_set():
        wake.wait(0.2 if slot is not None else 0.5)
        wake.clear()
        if pause.is_set() and not stop.is_set():
            pause.clear()
            _pause(election, runner)
            # continued (SIGCONT): stand by again, with a new election and the same identity
            election = current.election = make_election(election.identity)
            election.start()
        if slot is not None and not election.is_leader:
            slot_exit = _slot_over(election, slot)
            if slot_exit is not None:
                break
    election.stop()
    if server is not None:
        server.shutdown()
    backend.close()
    if slot_exit:
        return slot_exit
    return runner.exit_code if child_exited.is_set() and runner.exit_code is not None else 0


class _Current:
    """The election ``run`` uses right now (a new one after SIGTSTP/SIGCONT), for /healthz."""

    def __init__(self, election: Election) -> None:
        self.election = election

    def __getattr__(self, name: str) -> object:
        return getattr(self.election, name)


def _pause(election: Election, runner: Runner) -> None:
    """SIGTSTP: end the term, stop the command and release, then stop ``run`` itself.

    A stopped ``run`` can neither renew nor stop its command, so the command must not run
    while ``run`` is stopped, and no backend call may be half done (a file lock's flock
    held by a stopped process would block every other candidate). A SIGSTOP cannot be
    caught: there the fencing token is the guard.
    """
    log.info("received SIGTSTP: ending the term and stopping the command before stopping")
    election.stop()
    timing = election.timing
    bound = time.monotonic() + timing.lease_duration + runner.grace + timing.retry_period * 1.2 + timing.op_timeout + 1.0
    while (runner.busy or not election._finished.is_set()) and time.monotonic() < bound:
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGSTOP)
    log.info("continued: standing by again")


def _slot_done_before_start(election: Election, slot: Slot) -> bool:
    try:
        seen = election.lock.get(election.timing.op_timeout)
    except LockError:
        return False  # the election will retry and tell
    if seen is not None and slot.done_in(seen.record):
        log.info("slot %s is already done; nothing to run", slot)
        return True
    return False


#: ``run --once-per``: the slot ended and nobody was seen leading it (the job may not have run anywhere)
EXIT_SLOT_UNRUN = 4


def _slot_over(election: Election, slot: Slot) -> int | None:
    """A standby with ``--once-per``: the exit status once the slot is done or has ended, else None.

    0 when the slot was marked done or another candidate led it; :data:`EXIT_SLOT_UNRUN`
    when it ended with no leader seen at all (the backend unreachable or hung): then the
    job may not have run anywhere, which a cron monitor must not read as success.
    """
    if slot.done_in(election.record):
        log.info("slot %s was done by %s; nothing to run", slot, election.leader or "another candidate")
        return 0
    if slot.ends is not None and time.time() >= slot.ends:
        holder = election.leader
        if not holder:
            log.error("slot %s ended and nobody was seen leading it (is the lock backend reachable?); "
                      "it may not have run anywhere", slot)  # fmt: skip
            return EXIT_SLOT_UNRUN
        log.info("slot %s ended while %s was leading; not running it", slot, holder)
        return 0
    return None


def cmd_status(args: argparse.Namespace) -> int:
    from . import status as lock_status

    backend = open_backend(args.url)
    unsafe = partition_warning(backend)
    if unsafe:
        print(f"warning: {unsafe}", file=sys.stderr)
    lock = backend.lock(args.name)
    try:
        if args.watch:
            return _watch_status(args, lock, lock_status)
        if args.wait:
            info = lock_status.observe(args.name, lock, args.timeout)
        else:
            info = lock_status.describe(args.name, lock.get(args.timeout))
    finally:
        lock.close()
        backend.close()
    if args.json:
        print(info.as_json())
    else:
        print(f"{printable(args.name)}: {info.line()}")
        if info.state in ("held", "expired") and info.judged == "wall clock":
            print("  (judged from the record's renewTime and this host's clock; --wait observes it for a lease)")
    return 0


def _watch_status(args: argparse.Namespace, lock: object, lock_status: object) -> int:
    """``status --watch``: one line per change until SIGINT/SIGTERM (like ``kubectl get -w``)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)

    def emit(info: object, error: str | None) -> None:
        stamp = time.strftime("%H:%M:%S")
        if error is not None:
            print(json.dumps({"name": args.name, "state": "unreachable", "error": error}) if args.json
                  else f"{stamp} {printable(args.name)}: unreachable: {error}", flush=True)
        else:
            print(info.as_json() if args.json else f"{stamp} {printable(args.name)}: {info.line()}", flush=True)  # type: ignore[attr-defined]

    try:
        lock_status.watch(args.name, lock, args.timeout, emit, stop, poll=args.interval)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        pass
    return 0


def cmd_step_down(args: argparse.Namespace) -> int:
    if args.to is not None:
        validate_identity(args.to)  # it is written into the record: printable text only
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
    parser = _Parser(prog="celery-leader", description="Leader election for schedulers.")
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("CELERY_LEADER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run a command only while this candidate leads")
    _common_args(run)
    _timing_args(run)
    run.add_argument("--grace", type=_grace, default=10.0, metavar="S",
                     help="seconds between SIGTERM and SIGKILL (never past the lease deadline)")
    run.add_argument("--once-per", default=None, metavar="PERIOD",
                     help="cron on every host: run at most once per slot of PERIOD (e.g. 1h, 15m, 1d; UTC-aligned) "
                     "across all candidates; a standby exits 0 once the slot is done")
    run.add_argument("--slot", default=None, metavar="KEY",
                     help="like --once-per, with an explicit slot key (e.g. $(date +%%F) for a local day)")
    run.add_argument("--health-port", type=_port, default=None, metavar="P", help="serve /healthz and /metrics")
    run.add_argument("--health-host", default="127.0.0.1", help="address for --health-port (default 127.0.0.1)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="print the current holder, token and last renewal")
    _common_args(status)
    status.add_argument("--json", action="store_true", help="one JSON object (per line with --watch); fields in docs/cli.md")
    status.add_argument("--wait", action="store_true",
                        help="judge expiry by observation: watch a held record for up to one lease")
    status.add_argument("--watch", "-w", action="store_true",
                        help="keep watching and print a line at every change (Ctrl-C to stop)")
    status.add_argument("--interval", type=_seconds("--interval", 0.01), default=1.0, metavar="S",
                        help="with --watch on backends without notifications: poll every S seconds")
    status.add_argument("--timeout", type=_seconds("--timeout", 0.001), default=5.0)
    status.set_defaults(func=cmd_status)

    step = sub.add_parser("step-down", help="ask the current holder to hand over, and wait for the next term")
    _common_args(step)
    step.add_argument("--to", default=None, metavar="IDENTITY", help="prefer this candidate")
    step.add_argument("--timeout", type=_seconds("--timeout", 0.001), default=5.0)
    step.set_defaults(func=cmd_step_down)

    demo = sub.add_parser("demo", help="three candidates on a temporary file:// directory: watch them fail over")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    url = None
    try:
        if getattr(args, "url_file", None):
            if args.url:
                raise ConfigurationError("give --url or --url-file, not both")
            args.url = read_url_file(args.url_file)
        if hasattr(args, "url"):
            url = args.url = args.url or default_url()
        return args.func(args)
    except ConfigurationError as exc:
        print(f"celery-leader: configuration error: {_one_line(scrub(exc, url))}", file=sys.stderr)
        return 2
    except LockError as exc:
        print(f"celery-leader: {type(exc).__name__}: {_one_line(scrub(exc, url))}", file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    """A message as one printable line (no control characters reach the terminal)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
