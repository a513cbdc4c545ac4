"""The contract every lock backend implements.

Compare-and-swap is mandatory: ``create`` succeeds only if no lock object exists, and
``update`` only if the stored version is the one the caller read. Every call takes a
timeout and must return or raise within it. A backend that cannot do true
compare-and-swap is not accepted, because without it two candidates can both "win".
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import BackendUnavailable, ConfigurationError, Conflict, LockError
from .record import LeaderRecord

__all__ = [
    "LockError",
    "Conflict",
    "BackendUnavailable",
    "ConfigurationError",
    "Capabilities",
    "CAPABILITY_NAMES",
    "partition_warning",
    "Versioned",
    "Lock",
    "Backend",
    "RenewBatch",
    "BatchItem",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What a backend promises.

    ``linearizable``: a successful write is seen by every later read (no lost acknowledged
    writes). ``watch``: :meth:`Lock.wait_for_change` returns early on a change.
    ``partition_safe``: a network partition cannot let two sides both win a write.
    ``batch``: :meth:`Lock.renew_batch` gives an object whose ``update_many`` sends many
    locks' compare-and-swap updates in one round trip (the asyncio driver renews all due
    elections of a backend together; see :class:`RenewBatch`).
    """

    linearizable: bool
    watch: bool
    partition_safe: bool
    batch: bool = False


#: the names ``open_backend(url, require=...)`` accepts
CAPABILITY_NAMES = tuple(f.name for f in fields(Capabilities))


@dataclass(frozen=True)
class Versioned:
    """A record as read, with the opaque version to compare-and-swap against."""

    record: LeaderRecord
    version: str


class Lock(abc.ABC):
    """One named lock object in a backend. Thread-safe."""

    name: str
    capabilities: ClassVar[Capabilities]

    @abc.abstractmethod
    def get(self, timeout: float) -> Versioned | None:
        """Read the record; ``None`` if no lock object exists yet.

        Undecodable content is returned as :meth:`LeaderRecord.undecodable` with its
        version, never raised, so that the engine can overwrite it once it is stale.
        """

    @abc.abstractmethod
    def create(self, record: LeaderRecord, timeout: float) -> str:
        """Create the lock object if absent and return its version; :class:`Conflict` if it exists."""

    @abc.abstractmethod
    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        """Replace the record if the stored version is ``expected_version``; else :class:`Conflict`."""

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        """Return when the stored version differs from ``version``, or after ``timeout``.

        Backends without ``watch`` keep this default, which just sleeps.
        """
        time.sleep(max(0.0, timeout))

    def wait_for_change_hinted(self, version: str | None, timeout: float) -> Versioned | None:
        """:meth:`wait_for_change`, returning the record the change notification carried.

        A *hint*: what this node saw change (the gossip backend's local acceptor), not a
        read, so it may not be the stored record. The engine lets a hint stand in for the
        read after a wait only when it shows the holder it follows renewing the same term
        (a newer renew time, nothing else changed): the follower's lease clock restarts at
        once, which is never earlier than the write was sent; a takeover is still a
        compare-and-swap against the version, which fails if the hint was not stored.
        Anything else is read. Default (every backend whose notifications carry no
        record): wait, return ``None``.
        """
        self.wait_for_change(version, timeout)
        return None

    def close(self) -> None:
        """Release resources. Idempotent."""

    # asyncio variants: backends with a native async client may override these.
    async def aget(self, timeout: float) -> Versioned | None:
        return await asyncio.to_thread(self.get, timeout)

    async def acreate(self, record: LeaderRecord, timeout: float) -> str:
        return await asyncio.to_thread(self.create, record, timeout)

    async def aupdate(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        return await asyncio.to_thread(self.update, record, expected_version, timeout)

    async def await_for_change(self, version: str | None, timeout: float) -> None:
        if not self.capabilities.watch:
            await asyncio.sleep(max(0.0, timeout))
            return
        # a watch blocks its thread for the whole wait: keep watches out of the default
        # executor, or many standbys in one process would queue the leaders' renewals
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_watch_pool(), self.wait_for_change, version, timeout)

    def renew_batch(self) -> RenewBatch | None:
        """The object that can renew this lock together with others (``capabilities.batch``).

        Locks that return the same object may go into one :meth:`RenewBatch.update_many`
        call. ``None`` (the default): renew this lock on its own.
        """
        return None

    def describe(self) -> str:
        """Where this lock lives, for logs and banners (never with secrets)."""
        return f"{type(self).__name__}({self.name})"


#: one update of a batch: the lock, the record to write, the version it must still have
BatchItem = tuple[Lock, LeaderRecord, str]


class RenewBatch(abc.ABC):
    """Many compare-and-swap updates in one round trip, each still against its own version.

    Batching is transport only: every item is the same compare-and-swap that
    :meth:`Lock.update` does, decided on its own (one item's conflict never affects
    another's write), and every election's decisions stay with its own state machine.
    """

    @abc.abstractmethod
    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        """Send every item's compare-and-swap; return, in order, each one's new version or
        the exception :meth:`Lock.update` would have raised for it (:class:`Conflict`,
        :class:`BackendUnavailable`, ...). Raise only when the whole call failed (no item's
        outcome is known: each item may or may not have landed). Returns within ``timeout``.
        """


_WATCH_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_WATCH_POOL_GUARD = threading.Lock()


def _watch_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for blocking watches of the asyncio driver (a queued watch is only a later poll)."""
    global _WATCH_POOL
    with _WATCH_POOL_GUARD:
        if _WATCH_POOL is None:
            _WATCH_POOL = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="celery-leader-watch")
        return _WATCH_POOL


class Backend(abc.ABC):
    """A connection to one lock service, made from a URL; opens one :class:`Lock` per name.

    Many locks (elections) may share one backend object and its connections.
    """

    #: URL schemes this backend serves (the entry point names in ``celery_leader.backends``)
    schemes: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities]

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> "Backend":
        """Parse the URL; raise :class:`ConfigurationError` naming the fix if it is wrong."""

    @abc.abstractmethod
    def lock(self, name: str) -> Lock:
        """Open the lock for election ``name``."""

    def check(self, timeout: float = 5.0) -> None:
        """Verify at start-up that the backend can work (reachable, permitted, safe).

        Raises :class:`ConfigurationError` with the fix named, or :class:`BackendUnavailable`.
        """

    def close(self) -> None:
        """Close connections. Idempotent."""

    def check_once(self, timeout: float) -> None:
        """:meth:`check`, once per backend object (many elections may share it).

        :class:`ConfigurationError` propagates: the configuration cannot work, say so at
        start-up. :class:`BackendUnavailable` is logged and not remembered: the elections
        retry, and an unreachable server may come up later.
        """
        if getattr(self, "_checked", False):
            return
        try:
            self.check(timeout)
        except BackendUnavailable as exc:
            log.warning("%s is not reachable yet: %s", self.describe(), exc)
            return
        self._checked = True

    def describe(self) -> str:
        """The URL without secrets, for logs and banners."""
        return type(self).__name__


def partition_warning(backend: Backend) -> str | None:
    """One line to show (status, Django checks, start-up logs) when ``backend`` is not partition-safe."""
    if backend.capabilities.partition_safe:
        return None
    return (
        f"{backend.describe()} is not partition-safe: a failover or a network partition can let two "
        "candidates both win a write (Redis Sentinel replicates asynchronously), so two leaders are possible "
        "for a while; where that would do harm, use a partition-safe backend (a single redis://, "
        "kubernetes://, etcd://, postgresql:// or django://)"
    )
