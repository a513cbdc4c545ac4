"""Change notifications for the backends whose server pushes them (Redis pub/sub, PostgreSQL LISTEN).

One connection per backend object, read by one thread, wakes every lock of that backend
that waits for a change. A notification is the text ``"<version> <name>"``. A waiter reads
the current version only once the connection listens (a change between the read and the
subscription would be lost otherwise), then sleeps until a notification names another
version of its lock, the connection was re-established (a notification may have been
lost: read again), or its deadline. A subclass says how to listen: :meth:`_listen`.

A name stays *tracked* after its first wait for as long as the connection lasts: every
notification for it is noted, waiter or not. A standby's next wait then needs no read of
its own when nothing newer than the version its election just read has been announced
(every write announces itself, and a tracked name misses no announcement while the
connection lasts), which halves the reads a standby makes per renewal of the leader.
"""

from __future__ import annotations

import abc
import collections
import logging
import os
import threading
import time
from typing import Callable

from ..errors import BackendUnavailable

__all__ = ["ChangeNotifier"]

log = logging.getLogger(__name__)


class ChangeNotifier(abc.ABC):
    """Waiters per lock name, woken by notifications that a subclass's connection delivers."""

    #: names the listening thread and the "connection lost" log line
    label = "notification"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: name -> (message number, version) of the last notification for a watched name
        self._latest: dict[str, tuple[int, str]] = {}
        #: name -> connection generation since which every notification for it was noted
        self._tracked: dict[str, int] = {}
        #: (name, id(waiter)) -> the connection generation in which that waiter's last wait
        #: ended with the name tracked
        self._ended: dict[tuple[str, int], int] = {}
        self._messages = 0
        self._counts: dict[str, int] = collections.Counter()
        self._generation = 0
        #: set while the connection listens
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @abc.abstractmethod
    def _listen(self) -> None:
        """Connect, call :meth:`_connected` once listening, then :meth:`_deliver` each
        notification until ``self._stopping`` is set; raise when the connection fails.
        Close what it opened before returning or raising."""

    def _forked(self) -> None:
        """Called in a forked child before its first wait: drop what belongs to the parent."""

    def _interrupt(self) -> None:
        """Called by :meth:`stop`: end a blocking read of the connection now (shut its socket
        down), so that :meth:`_listen` can block for seconds while idle instead of waking
        several times a second to look at ``_stopping``."""

    #: how long an idle listening connection blocks in one read (it wakes for stop() at once)
    IDLE_READ = 5.0

    def ensure_running(self) -> None:
        with self._cond:
            if self._pid != os.getpid():
                # forked: the parent's thread is not here and its connection is not ours
                self._pid, self._thread = os.getpid(), None
                self.ready.clear()
                self._forked()
            if self._thread is None and not self._stopping.is_set():
                thread_name = "celery-leader-" + "".join(c if c.isalnum() else "-" for c in self.label)
                self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping.set()
        if self._pid == os.getpid():
            try:
                self._interrupt()
            except Exception:  # noqa: BLE001 - best effort: the read times out by itself
                log.debug("%s: could not interrupt the connection", self.label, exc_info=True)
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        self._backoff = 0.05
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                if not self._stopping.is_set():
                    log.debug("%s connection lost: %r; reconnecting", self.label, exc)
            finally:
                self.ready.clear()
                self._bump()
            self._stopping.wait(self._backoff)
            self._backoff = min(self._backoff * 2, 1.0)

    def _connected(self) -> None:
        """The connection listens: wake every waiter to read again."""
        self._backoff = 0.05
        self.ready.set()
        self._bump()

    def _bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _deliver(self, text: str) -> None:
        version, _, name = text.partition(" ")
        with self._cond:
            if self._counts.get(name) or name in self._tracked:
                self._messages += 1
                self._latest[name] = (self._messages, version)
                self._cond.notify_all()

    def wait(self, name: str, read_version: Callable[[float], str | None], version: str | None,
             timeout: float, waiter: object = None) -> None:  # fmt: skip
        """Return when the version of lock ``name`` (``read_version(timeout)``) differs from
        ``version``, or after ``timeout``.

        ``waiter`` (the lock object) lets a wait skip its first read: when that waiter's
        previous wait ended on this same connection, its election read ``version`` while
        the name was tracked, so any later change has been announced.
        """
        key = (name, id(waiter)) if waiter is not None else None
        deadline = time.monotonic() + max(0.0, timeout)
        self.ensure_running()
        # listen before reading, or a change between the read and the subscription is lost
        self.ready.wait(min(max(0.0, timeout), 2.0))
        with self._cond:
            self._counts[name] += 1
            seen = self._messages  # only notifications after this one count
        first = True
        try:
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with self._cond:
                    generation = self._generation
                    since = self._tracked.get(name)
                    latest = self._latest.get(name)
                    # tracked through this whole connection, and nothing announced but ``version``
                    # (or nothing at all): ``version`` is current, no read needed
                    trusted = (first and key is not None and self._ended.get(key) == generation == since
                               and self.ready.is_set() and (latest is None or latest[1] == version))  # fmt: skip
                    if since != generation and self.ready.is_set():
                        self._tracked[name] = generation  # from now on nothing is missed
                        self._latest.pop(name, None)  # announcements of an older connection
                first = False
                if trusted:
                    current = version
                else:
                    try:
                        current = read_version(left)
                    except BackendUnavailable:
                        # the server is away: a bounded pause, the engine decides what next
                        self._stopping.wait(min(max(0.0, deadline - time.monotonic()), 0.25))
                        continue
                if current != version:
                    return
                with self._cond:
                    while True:
                        latest = self._latest.get(name)
                        if latest is not None and latest[0] > seen and latest[1] != version:
                            return
                        if self._generation != generation or self._stopping.is_set():
                            break  # reconnected: re-read, a notification may have been lost
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return
                        self._cond.wait(left)
        finally:
            with self._cond:
                if key is not None:
                    if self._tracked.get(name) == self._generation:
                        # tracked before this wait ended: the election's next read is covered
                        self._ended[key] = self._generation
                    else:
                        self._ended.pop(key, None)
                self._counts[name] -= 1
                if not self._counts[name]:
                    del self._counts[name]  # still tracked: its announcements keep being noted
