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
from celery_leader.lock import Lock, Versioned

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
            # the time first: a sample that shows a leader then proves it led at or after
            # that time, however late this thread is scheduled
            now = time.monotonic()
            leaders = tuple(e.is_leader for e in self.elections)
            tokens = tuple(e.token for e in self.elections)
            self.samples.append((now, leaders, tokens))
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


# Timing that leaves the backend's watch (or notification) as the only way a follower can act
# on a release within HANDOVER_WAIT: it polls every 30-36 s, and the released record would
# otherwise only be looked at again then (a lease, 60 s, is longer still). A handover within
# 10 s is therefore proof of the watch, by a factor of three even on a stalled machine, and
# the watch itself takes milliseconds (measured in the benchmarks, not here).
WATCHED = dict(lease_duration=60.0, renew_deadline=40.0, retry_period=30.0)
HANDOVER_WAIT = 10.0


def asyncio_handover(url: str) -> None:
    """Two :class:`AsyncElection` candidates on ``url`` (:data:`WATCHED` timing); the leader
    stops (releasing) and the standby, waiting in the backend's watch, must take over within
    :data:`HANDOVER_WAIT`, long before its next poll; with a higher token."""
    import asyncio

    from celery_leader.aio import AsyncElection

    async def scenario() -> None:
        a = await AsyncElection("aio", url=url, identity="a", **WATCHED).start()
        assert await a.wait_until_leader(20)
        b = await AsyncElection("aio", url=url, identity="b", **WATCHED).start()
        try:
            # b has read a's record: from here only a poll (30 s on) or the watch wakes it
            for _ in range(int(WAIT / 0.01)):
                if b.leader == "a":
                    break
                await asyncio.sleep(0.01)
            assert a.is_leader and not b.is_leader and b.leader == "a"
            token = a.token
            await a.stop()
            assert await b.wait_until_leader(HANDOVER_WAIT), "the asyncio standby did not see the release: it polls every 30 s"
            assert b.token is not None and token is not None and b.token > token
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def handover_through_the_watch(leader: Election, es: list[Election]) -> Election:
    """``leader`` steps down; another of ``es`` (all with :data:`WATCHED` timing) must lead
    within :data:`HANDOVER_WAIT`, which only the backend's watch can bring about. Returns it."""
    others = [e for e in es if e is not leader]
    # every other candidate has read the leader's record: from here only a poll (30 s on) or
    # the watch makes it read again (it may be in the watch already, or about to enter it)
    wait_for(lambda: all(e.leader == leader.identity for e in others))
    token = leader.token
    leader.step_down()
    try:
        nxt = wait_for(lambda: (lambda e: e if e is not leader else None)(leader_of(es)), HANDOVER_WAIT)
    except AssertionError:
        raise AssertionError(f"no handover within {HANDOVER_WAIT} s of a release: the followers (polling every 30 s) did not see it") from None
    assert isinstance(nxt, Election) and nxt.token is not None and token is not None and nxt.token > token
    return nxt


def watched_handovers(url: str, rounds: int = 3) -> None:
    """``rounds`` step-downs among four candidates on ``url`` (:data:`WATCHED` timing), each
    seen by a follower through the backend's watch (or notification): see
    :func:`handover_through_the_watch`.

    Four candidates: one that stepped down waits a lease before competing again.
    """
    es = [Election("beat", url=url, identity=f"n{i}", **WATCHED) for i in range(4)]
    try:
        for e in es:
            e.start()
        leader = wait_for(lambda: leader_of(es))
        for _ in range(rounds):
            leader = handover_through_the_watch(leader, es)
    finally:
        for e in es:
            e.stop(timeout=5)


# --- fault scenarios shared by the backends' fault tests ----------------------------------
# Each takes started elections (the ``elections`` fixture) and what does the fault to this
# backend; it asserts safety itself and returns what the test checks on top.


def outage_then_back(
    es: list[Election], down: Callable[[], object], up: Callable[[], object], *, downtime: float, what: str, timeout: float = WAIT
) -> float:
    """The backend goes ``down()`` under a leader for ``downtime`` s, then comes ``up()`` with
    its data: nobody leads from one lease after the outage until it is back, and the next
    term's token is higher. Returns the seconds from ``up()`` to the next leader."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        killed = time.monotonic()
        down()
        # the leader stops by its deadline (< one lease after its last successful renewal)
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 1.0)
        time.sleep(downtime)
        back = time.monotonic()
        up()
        second = wait_for(lambda: leader_of(es), timeout)
        resumed = time.monotonic() - back
    assert not watch.overlaps()
    assert watch.leaders_between(killed + LEASE, back) == set(), f"somebody led while {what} was down"
    assert second.token is not None and token is not None and second.token > token
    return resumed


def paused_while_leading(es: list[Election], pause: Callable[[], object], resume: Callable[[], object], *, what: str) -> list[int]:
    """The backend is paused (SIGSTOP) under a leader: it stops by its deadline, nobody leads
    until the backend resumes, someone leads after. Returns the tokens seen, in order."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        paused = time.monotonic()
        pause()
        try:
            # the leader's renewals time out; it stops by its deadline
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            time.sleep(LEASE)
        finally:
            resume()
            resumed = time.monotonic()
        wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert watch.leaders_between(paused + LEASE, resumed) == set(), f"somebody led while {what} was frozen"
    tokens = watch.tokens()
    assert tokens == sorted(tokens)
    return tokens


def lock_deleted_by_hand(es: list[Election], delete: Callable[[], object], vanished: str) -> Election:
    """The lock entry is deleted under a leader (its fence stays): it reads as held by
    ``vanished``, is waited out rather than grabbed, and the next token is higher.
    Returns the next leader."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        deleted = time.monotonic()
        delete()
        # the holder learns at its next renewal; everyone waits one lease before taking over
        wait_for(lambda: not first.is_leader, 5)
        assert any(e.leader == vanished for e in es), [e.leader for e in es]
        second = wait_for(lambda: leader_of(es))
        assert second.token is not None and token is not None and second.token > token
    assert not watch.overlaps()
    gap = [t for t, leaders, _ in watch.samples if t > deleted and not any(leaders)]
    assert gap, "leadership moved on without a pause"
    return second


def lock_overwritten_with_garbage(es: list[Election], overwrite: Callable[[], object]) -> None:
    """The lock entry is overwritten with bytes that are no record under a leader: the leader
    stops, and someone leads again with a higher token."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        overwrite()
        wait_for(lambda: not first.is_leader, LEASE + 1.0)
        second = wait_for(lambda: leader_of(es))
    assert not watch.overlaps()
    assert second.token is not None and token is not None and second.token > token


def quorum_member_killed(
    es: list[Election], kill: Callable[[int], object], leader_member: Callable[[], int], *, settle: float = 0.0, timeout: float = WAIT
) -> None:
    """In a three-member cluster, the member that orders all writes (``leader_member()``, asked
    once the elections have a leader) is killed: elections carry on with the quorum left (after ``settle`` s); then a second
    member is killed: quorum lost, nobody may keep leading."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        token = first.token
        ordering = leader_member()
        kill(ordering)
        time.sleep(settle)
        now = wait_for(lambda: leader_of(es), timeout)
        # a quorum remains: somebody leads with writes confirmed by it
        assert now.token is not None and token is not None and now.token >= token
        kill((ordering + 1) % 3)  # quorum lost: nobody may keep leading
        lost = time.monotonic()
        wait_for(lambda: not any(e.is_leader for e in es), LEASE + 2.0)
        time.sleep(LEASE)
        assert watch.leaders_between(lost + LEASE + 0.5, time.monotonic()) == set()
    assert not watch.overlaps()
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def leaders_member_cut_off(
    es: list[Election], pause: Callable[[int], object], resume: Callable[[int], object], *, timeout: float = WAIT
) -> None:
    """Candidate ``i`` reaches only member ``i``; the leader's member is paused: it stops, a
    candidate on another member takes over with a higher token, and the cut-off one never
    leads again, not even once its member is back."""
    with Watch(es) as watch:
        first = wait_for(lambda: leader_of(es))
        i = es.index(first)
        token = first.token
        cut = time.monotonic()
        pause(i)  # SIGSTOP: connections stay open, nothing answers
        try:
            wait_for(lambda: not first.is_leader, LEASE + 1.0)
            second = wait_for(lambda: leader_of(es), timeout)
            assert second is not first
            assert second.token is not None and token is not None and second.token > token
            time.sleep(LEASE)
        finally:
            resume(i)
        time.sleep(LEASE)  # the cut-off candidate sees the new term and follows
    assert not watch.overlaps()
    assert i not in watch.leaders_between(cut + LEASE, time.monotonic())
    tokens = watch.tokens()
    assert tokens == sorted(tokens)


def standby_follows_by_hints(
    name: str, leader_backend: object, lock: Lock, then: Callable[[], object] | None = None, hints_wanted: int = 12
) -> None:
    """Issue 21: a standby whose lock hands back the record a change notification carried
    (``wait_for_change_hinted``) follows its renewing leader without a read per renewal;
    once the leader is gone without a release it still waits out the lease and takes over
    with a compare-and-swap (token + 1). ``lock``: the standby's own, not yet used; ``then``
    runs while the standby leads."""
    timing = dict(lease_duration=4.0, renew_deadline=2.5, retry_period=0.25)
    leader = Election(name, backend=leader_backend, identity="leader", release_on_cancel=False, **timing)  # type: ignore[arg-type]
    reads: list[float] = []
    hints: list[str] = []
    get, hinted = lock.get, lock.wait_for_change_hinted

    def counted_get(timeout: float) -> Versioned | None:
        reads.append(time.monotonic())
        return get(timeout)

    def counted_hint(version: str | None, timeout: float) -> Versioned | None:
        hint = hinted(version, timeout)
        if hint is not None:
            hints.append(hint.version)
        return hint

    lock.get, lock.wait_for_change_hinted = counted_get, counted_hint  # type: ignore[method-assign]
    # the standby's own waits end at least every retry period (then it reads): a longer one
    # than the leader's renewals, so that nearly every wait ends with a renewal, as at the
    # default timing, where the leader renews 0.9-1.0 x and a standby reads 1.0-1.2 x it
    standby = Election(name, lock=lock, identity="standby", **{**timing, "retry_period": 1.0})
    try:
        leader.start()
        assert leader.wait_until_leader(10)
        token = leader.token
        standby.start()
        deadline = time.monotonic() + 30
        while len(hints) < hints_wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        n_reads, n_hints = len(reads), len(hints)
        assert n_hints >= hints_wanted, (n_hints, n_reads)
        # a read now and then (the first, one after a notification that lagged), not one per renewal
        assert n_reads <= 1 + n_hints // 3, (n_reads, n_hints)
        assert standby.leader == "leader" and not standby.is_leader
        leader.stop()  # gone without a release
        assert standby.wait_until_leader(20)
        assert standby.token == token + 1
        if then is not None:
            then()
    finally:
        standby.stop()
        leader.stop()
