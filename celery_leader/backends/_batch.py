"""What the ``update_many`` of a backend that batches only plain renewals shares (PostgreSQL,
etcd): sort the items into those its one round trip can carry and those that must go
through their lock's own ``update`` (a new term that raises the fence, a release that
notifies, a version that is not ours, a second item for the same key), then send the
latter one by one in the time the call has left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..lock import BackendUnavailable, BatchItem, ConfigurationError, Lock

P = TypeVar("P")

Outcome = str | Exception | None


@dataclass
class Sorted(Generic[P]):
    """``out``: an outcome per item, ``None`` until known; ``batched``: ``(index, plan)`` for
    the round trip; ``alone``: indexes for :func:`send_alone`."""

    out: list[Outcome]
    batched: list[tuple[int, P]] = field(default_factory=list)
    alone: list[int] = field(default_factory=list)


def sort_items(
    items: Sequence[BatchItem],
    owner: str,
    owns: Callable[[Lock], bool],
    plan: Callable[[Lock, BatchItem], P | None],
    key: Callable[[Lock], str],
) -> Sorted[P]:
    """Sort ``items`` for the backend described as ``owner``: a lock it does not own is that
    item's :class:`ConfigurationError`; ``plan`` gives what the round trip sends for a plain
    renewal, ``None`` for anything else (which goes alone, as does a second item for a
    ``key`` already batched); an exception from ``plan`` is that item's own outcome."""
    sorted_: Sorted[P] = Sorted([None] * len(items))
    seen: set[str] = set()
    for i, item in enumerate(items):
        lock = item[0]
        if not owns(lock):
            sorted_.out[i] = ConfigurationError(f"{lock.describe()} does not belong to {owner}")
            continue
        try:
            planned = plan(lock, item)
        except Exception as exc:  # noqa: BLE001 - this item's own outcome (a record that cannot be encoded)
            sorted_.out[i] = exc
            continue
        if planned is None or key(lock) in seen:
            sorted_.alone.append(i)
            continue
        seen.add(key(lock))
        sorted_.batched.append((i, planned))
    return sorted_


def send_alone(items: Sequence[BatchItem], sorted_: Sorted[P], deadline: float) -> list[str | Exception]:
    """Each item of ``sorted_.alone`` through its lock's own ``update`` before ``deadline``
    (monotonic); every outcome still unknown after that is :class:`BackendUnavailable`."""
    out = sorted_.out
    for i in sorted_.alone:
        lock, record, version = items[i]
        left = deadline - time.monotonic()
        if left <= 0:
            out[i] = BackendUnavailable(f"{lock.describe()}: no time left in the batch's timeout")
            continue
        try:
            out[i] = lock.update(record, version, left)
        except Exception as exc:  # noqa: BLE001 - this item's own outcome
            out[i] = exc
    return [o if o is not None else BackendUnavailable("no answer") for o in out]
