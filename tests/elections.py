"""In-process elections for backend fault tests: start several, sample who leads.

Timing: lease 1 s, renew deadline 0.6 s, retry 0.2 s. Safety is asserted exactly (never two
leaders at once, nobody leads while the backend cannot confirm, tokens increase); liveness
only with generous waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from celery_leader import Election

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2
WAIT = 20.0


class Watch:
    """Samples every election's ``is_leader`` every 10 ms: overlaps and who led when."""

    def __init__(self, elections: list[Election]) -> None:
        self.elections = elections
        self.samples: list[tuple[float, tuple[bool, ...], tuple[int | None, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            leaders = tuple(e.is_leader for e in self.elections)
            tokens = tuple(e.token for e in self.elections)
            self.samples.append((time.monotonic(), leaders, tokens))
            time.sleep(0.01)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def overlaps(self) -> list[float]:
        return [t for t, leaders, _ in self.samples if sum(leaders) > 1]

    def leaders_between(self, start: float, end: float) -> set[int]:
        return {i for t, leaders, _ in self.samples if start <= t <= end for i, lead in enumerate(leaders) if lead}

    def tokens(self) -> list[int]:
        """Tokens in the order terms were seen (each once)."""
        seen: list[int] = []
        for _, _, tokens in self.samples:
            for tok in tokens:
                if tok is not None and tok not in seen:
                    seen.append(tok)
        return seen


def wait_for(predicate: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


def leader_of(es: list[Election]) -> Election | None:
    leading = [e for e in es if e.is_leader]
    assert len(leading) <= 1, "two elections lead at once"
    return leading[0] if leading else None


@pytest.fixture
def elections() -> Iterator[Callable[..., list[Election]]]:
    """``elections(url_or_urls, n=2, name="beat")``: started elections, stopped afterwards.

    With a list of URLs, election ``i`` uses ``urls[i]`` (candidates reaching different
    servers of one cluster).
    """
    made: list[Election] = []

    def make(urls: str | list[str], n: int = 2, name: str = "beat") -> list[Election]:
        if isinstance(urls, str):
            urls = [urls] * n
        new = [
            Election(name, url=u, identity=f"node{i}", lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
            for i, u in enumerate(urls)
        ]
        made.extend(new)
        for e in new:
            e.start()
        return new

    yield make
    for e in made:
        e.stop(timeout=5)


def asyncio_handover(url: str) -> float:
    """Two :class:`AsyncElection` candidates on ``url``; the leader stops (releasing) and
    the standby, waiting in the backend's watch (retry period 2 s), takes over. Returns the
    seconds from ``stop()`` to the standby leading; asserts safety on the way."""
    import asyncio

    from celery_leader.aio import AsyncElection

    timing = dict(lease_duration=10.0, renew_deadline=6.0, retry_period=2.0)

    async def scenario() -> float:
        a = await AsyncElection("aio", url=url, identity="a", **timing).start()
        assert await a.wait_until_leader(20)
        b = await AsyncElection("aio", url=url, identity="b", **timing).start()
        try:
            await asyncio.sleep(0.5)
            assert a.is_leader and not b.is_leader and b.leader == "a"
            token = a.token
            started = time.monotonic()
            await a.stop()
            assert await b.wait_until_leader(20), "the asyncio standby did not take over"
            elapsed = time.monotonic() - started
            assert b.token is not None and token is not None and b.token > token
            return elapsed
        finally:
            await a.stop()
            await b.stop()

    return asyncio.run(scenario())
