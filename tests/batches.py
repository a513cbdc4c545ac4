"""The asyncio end-to-end scenario of a backend that batches renewals (``capabilities.batch``):
many elections on one backend object stay leading through ``update_many`` alone.

Counted, not timed: every ``update_many`` call's size, and every ``update()`` a lock makes
outside a batch (releases, retries). Used by tests/postgresql and tests/etcd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from celery_leader.aio import AsyncElection

#: renewals every 0.2 s, terms that survive a loaded machine's hiccups
STEADY = dict(lease_duration=3.0, renew_deadline=2.0, retry_period=0.2)


def assert_renewed_in_batches(backend: Any, names: list[str]) -> None:
    """Elections of ``names`` on ``backend`` lead, and stay leading longer than a lease with
    their renewals sent through ``update_many``: one term each, none ended, at least five
    batched renewals per election, and fewer one-off updates than a quarter of those."""
    sizes: list[int] = []
    alone: list[str] = []
    inner_many = backend.update_many

    def counting(items, timeout):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return inner_many(items, timeout)

    backend.update_many = counting
    original_lock = backend.lock

    def lock(name: str) -> Any:  # every update() outside a batch is noted
        made = original_lock(name)
        inner = made.update

        def spying(record, expected, timeout):  # type: ignore[no-untyped-def]
            alone.append(name)
            return inner(record, expected, timeout)

        made.update = spying
        return made

    backend.lock = lock
    started: dict[str, int] = {}
    stopped: list[str] = []

    def on_started(name: str) -> Callable[[object], None]:
        return lambda leadership: started.__setitem__(name, started.get(name, 0) + 1)

    def on_stopped(name: str) -> Callable[[], None]:
        return lambda: stopped.append(name)

    async def main() -> None:
        elections = [
            AsyncElection(name, backend=backend, identity=f"me{i}", on_started_leading=on_started(name),
                          on_stopped_leading=on_stopped(name), **STEADY)
            for i, name in enumerate(names)
        ]  # fmt: skip
        for e in elections:
            await e.start()
        deadline = time.monotonic() + 20
        while not all(e.is_leader for e in elections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert all(e.is_leader for e in elections)
        before = sum(sizes)
        await asyncio.sleep(4.0)  # longer than the lease: only the batched renewals kept them
        assert all(e.is_leader for e in elections)
        assert stopped == [], "no term ended"
        assert sum(sizes) - before >= len(names) * 5
        for e in elections:
            await e.stop()

    asyncio.run(main())
    assert all(n == 1 for n in started.values()) and len(started) == len(names)  # one term each, never lost
    assert len(alone) < sum(sizes) // 4  # the one-off updates are the releases (and any retry), not the renewals
