"""The supervisor between ``celery-leader run`` and its command: it owns the whole tree.

``python -I -S path/to/supervise.py --parent PID --grace S --report FD -- CMD ...``

It imports nothing but the standard library (``run`` starts it by path with ``-I -S``, so
its start-up adds as little as possible to a takeover).

``run`` starts this process for every term; it starts CMD and guarantees that no
descendant of CMD outlives it, whichever way the term ends:

* It is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every orphaned descendant
  (a background ``sleep &`` of a shell that exited, a double fork, a daemon that called
  ``setsid``) is re-parented to it instead of to init, so it can always find and kill
  them (through ``/proc/PID/task/TID/children``).
* CMD runs in a process group of its own; the supervisor reports the group id to ``run``
  on the ``--report`` pipe, so that ``run`` can SIGKILL the group itself, directly.
* It dies with ``run``: ``PR_SET_PDEATHSIG`` delivers SIGUSR1 when ``run`` dies (even by
  SIGKILL), and SIGUSR1 means "kill the whole tree now".
* SIGTERM (from ``run``, when the term ends) is forwarded to the group and to every other
  descendant.
* When CMD exits by itself, whatever it left behind gets SIGTERM, then SIGKILL after
  ``--grace``; the supervisor exits only when no descendant is left, with CMD's exit
  status (``128 + N`` when CMD was killed by signal N, as a shell reports it).

What can still escape: a descendant that is re-parented away on purpose (another subreaper
below us that exits, or a process started through a service manager, ``at``, ``ssh``,
``docker``); and nothing here can act while ``run`` and this process are stopped
(SIGSTOP). The fencing token is the guard for those (docs/design.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import time
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: signal that means "kill the whole tree now" (also the parent-death signal)
KILL_TREE = signal.SIGUSR1
#: the signals the supervisor handles (blocked around the fork, default again in CMD)
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, KILL_TREE)


def prctl(option: int, value: int) -> bool:
    """Linux prctl(2); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (children first), from ``/proc/PID/task/TID/children``."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            for kid in kids:
                if kid not in found:
                    found.append(kid)
                    todo.append(kid)
    return found


def exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1  # pragma: no cover - stopped/continued are not requested


class Supervisor:
    def __init__(self, command: Sequence[str], grace: float) -> None:
        self.command = list(command)
        self.grace = grace
        self.child: int | None = None
        self.status: int | None = None
        self.me = os.getpid()
        self.terminating = False

    # --- signals ---

    def signal_tree(self, sig: int) -> None:
        """``sig`` to CMD's group and to every descendant (those that left the group too)."""
        if self.child is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.child, sig)
        for pid in descendants(self.me):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def on_term(self, signum: int, frame: object) -> None:
        self.terminating = True  # before CMD started: it never starts
        self.signal_tree(signal.SIGTERM)

    def on_kill_tree(self, signum: int, frame: object) -> None:
        self.kill_all_and_exit(137 if self.status is None else exit_status(self.status))

    def kill_all_and_exit(self, code: int) -> None:
        """SIGKILL every descendant until none is left (bounded), reap them, exit."""
        bound = time.monotonic() + 10.0  # only an uninterruptible (D state) process resists SIGKILL
        while time.monotonic() < bound:
            self.signal_tree(signal.SIGKILL)
            if not self.reap(until=time.monotonic() + 0.05):
                break
        os._exit(code)

    # --- reaping ---

    def reap(self, until: float) -> bool:
        """Reap exited descendants until ``until``; False once no child is left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                if time.monotonic() >= until:
                    return True
                time.sleep(0.01)
                continue
            if pid == self.child and self.status is None:
                self.status = status

    def spawn(self) -> int | None:
        """Fork and exec CMD in a process group of its own (signals blocked around the fork)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        if self.terminating:  # the term ended before CMD could start
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            return None
        pid = os.fork()
        if pid == 0:  # the child: default signal handling, own group, exec
            try:
                for sig in HANDLED:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
                os.setpgid(0, 0)
                os.execvp(self.command[0], self.command)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.write(2, f"celery-leader: cannot start {self.command[0]}: {exc.strerror or exc}\n".encode())
                os._exit(127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126)
            os._exit(126)  # pragma: no cover - execvp returns only by raising
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so the group exists before we report it
        self.child = pid
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        return pid

    def run(self, report_fd: int | None) -> int:
        pid = self.spawn()
        if pid is None:
            return 128 + signal.SIGTERM
        if report_fd is not None:
            with contextlib.suppress(OSError):
                os.write(report_fd, f"{pid}\n".encode())
                os.close(report_fd)
        # wait for CMD itself, reaping adopted orphans on the way
        while self.status is None:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - CMD is our child until reaped
                break
            if pid == self.child:
                self.status = status
        # CMD is gone: what it left behind gets SIGTERM, then SIGKILL after the grace
        if descendants(self.me):
            self.signal_tree(signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while descendants(self.me) and time.monotonic() < deadline:
                self.reap(until=min(deadline, time.monotonic() + 0.05))
        code = exit_status(self.status) if self.status is not None else 1
        self.kill_all_and_exit(code)
        return code  # pragma: no cover


USAGE = "usage: supervise.py --parent PID [--grace S] [--report FD] -- CMD [ARGS...]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options: dict[str, str] = {}
    while args and args[0] != "--":
        if len(args) < 2 or args[0] not in ("--parent", "--grace", "--report"):
            print(USAGE, file=sys.stderr)
            return 2
        options[args[0]] = args[1]
        del args[:2]
    command = args[1:]
    if not command or "--parent" not in options:
        print(USAGE, file=sys.stderr)
        return 2
    sup = Supervisor(command, float(options.get("--grace", "10")))
    signal.signal(signal.SIGTERM, sup.on_term)
    signal.signal(KILL_TREE, sup.on_kill_tree)
    # terminal signals are run's to handle; run decides when the command stops
    signal.signal(signal.SIGINT, sup.on_term)
    signal.signal(signal.SIGHUP, sup.on_term)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, KILL_TREE)
    if os.getppid() != int(options["--parent"]):  # run died before the parent-death signal was set
        return 137
    report = options.get("--report")
    return sup.run(int(report) if report is not None else None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
