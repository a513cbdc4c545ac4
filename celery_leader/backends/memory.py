"""``memory://[NAMESPACE]``: locks in this process's memory, for tests and examples.

All backends opened with the same namespace share one store, so several elections in one
process can compete as they would through a server.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Iterator
from urllib.parse import urlsplit

from ..lock import (
    Backend,
    BackendUnavailable,
    BatchItem,
    Capabilities,
    ConfigurationError,
    Conflict,
    Lock,
    RenewBatch,
    Versioned,
)
from ..record import LeaderRecord, decode_or_placeholder, encode_record
from ..urls import UrlOptions, redact

__all__ = ["MemoryBackend", "MemoryLock"]

CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True, batch=True)


class _Store(RenewBatch):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.stalled = 0

    def _enter(self, timeout: float) -> None:
        """Wait (holding ``cond``) until not stalled; raise if that takes longer than timeout."""
        if self.stalled and not self.cond.wait_for(lambda: not self.stalled, timeout):
            raise BackendUnavailable("memory store is stalled")

    def update_many(self, items: Sequence[BatchItem], timeout: float) -> list[str | Exception]:
        """Each item's own ``update`` in turn (subclasses that slow or fail it stay in force)."""
        out: list[str | Exception] = []
        deadline = time.monotonic() + max(0.0, timeout)
        for lock, record, expected in items:
            if not isinstance(lock, MemoryLock) or lock._store is not self:
                out.append(ConfigurationError(f"{lock.describe()} is not in this memory store"))
                continue
            try:
                out.append(lock.update(record, expected, max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - the item's own outcome
                out.append(exc)
        return out


_STORES: dict[str, _Store] = {}
_STORES_GUARD = threading.Lock()


def _store(namespace: str) -> _Store:
    with _STORES_GUARD:
        return _STORES.setdefault(namespace, _Store())


class MemoryLock(Lock):
    capabilities = CAPABILITIES

    def __init__(self, store: _Store, name: str) -> None:
        self._store = store
        self.name = name

    def get(self, timeout: float) -> Versioned | None:
        with self._store.cond:
            self._store._enter(timeout)
            found = self._store.objects.get(self.name)
        if found is None:
            return None
        raw, version = found
        return Versioned(decode_or_placeholder(raw), version)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._put(encode_record(record), None, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        return self._put(encode_record(record), expected_version, timeout)

    def _put(self, raw: bytes, expected: str | None, timeout: float) -> str:
        with self._store.cond:
            self._store._enter(timeout)
            current = self._store.objects.get(self.name)
            if expected is None and current is not None:
                raise Conflict(f"{self.name} exists")
            if expected is not None and (current is None or current[1] != expected):
                raise Conflict(f"{self.name} changed")
            version = uuid.uuid4().hex
            self._store.objects[self.name] = (raw, version)
            self._store.cond.notify_all()
            return version

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)

        def changed() -> bool:
            current = self._store.objects.get(self.name)
            return (current[1] if current else None) != version

        with self._store.cond:
            self._store.cond.wait_for(changed, max(0.0, deadline - time.monotonic()))

    def renew_batch(self) -> RenewBatch:
        return self._store

    def write_raw(self, raw: bytes) -> None:
        """Store bytes as they are (tests of garbage handling)."""
        with self._store.cond:
            self._store.objects[self.name] = (raw, uuid.uuid4().hex)
            self._store.cond.notify_all()

    def describe(self) -> str:
        return f"memory lock {self.name!r}"


class MemoryBackend(Backend):
    schemes = ("memory",)
    capabilities = CAPABILITIES

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self._store = _store(namespace)

    @classmethod
    def from_url(cls, url: str) -> "MemoryBackend":
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigurationError(f"not a memory:// URL: {redact(url)!r}")
        UrlOptions(parts.query, scheme="memory", known=())  # refuses any option, naming it
        return cls((parts.netloc + parts.path).strip("/"))

    def lock(self, name: str) -> MemoryLock:
        return MemoryLock(self._store, name)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """Make every call wait as if the server stopped answering (fault tests)."""
        with self._store.cond:
            self._store.stalled += 1
        try:
            yield
        finally:
            with self._store.cond:
                self._store.stalled -= 1
                self._store.cond.notify_all()

    def describe(self) -> str:
        return f"memory://{self.namespace}"
