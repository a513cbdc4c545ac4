"""A follower's change notification that carries the record (a *hint*, issue 21): it stands
in for the read only for a renewal of the term the follower follows, and a takeover after
hints is still a compare-and-swap against the hinted version."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from celery_leader import Election
from celery_leader.aio import AsyncElection
from celery_leader.backends.memory import MemoryBackend
from celery_leader.core import NewLeader, Read, Update, Wait
from celery_leader.lock import Conflict, Versioned
from celery_leader.record import LeaderRecord
from tests.core.test_core_standby import Misbehaving
from tests.core.test_core_state_machine import RP, FakeClock, L, make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


TERM = dict(holder="other", lease_duration=L, transitions=4, acquire_time=1_700_000_100.0)


def rec(renew: float = 1_700_000_200.0, **changes) -> LeaderRecord:
    return LeaderRecord(**{**TERM, "renew_time": renew, **changes})


def following(clock: FakeClock):
    """A follower that read the other's record and now waits for a change."""
    core = make(clock)
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(rec(), "v0"))
    assert [e for e in core.pop_events() if isinstance(e, NewLeader)]
    wait = core.next_action()
    assert isinstance(wait, Wait) and wait.version == "v0"
    return core


def test_a_renewal_of_the_followed_term_replaces_the_read(clock):
    core = following(clock)
    for n in range(1, 20):  # far past one lease: each hint restarts the clock
        clock.advance(RP)
        assert core.hinted(Versioned(rec(renew=1_700_000_200.0 + n), f"v{n}"))
        action = core.next_action()
        assert isinstance(action, Wait), action  # no Read in between
        assert action.version == f"v{n}"
        assert core.observed_at == clock.now
        assert core.observed.record.renew_time == 1_700_000_200.0 + n
        assert not core.pop_events()  # the same leader: nothing to announce


def test_after_hints_the_takeover_is_a_cas_against_the_hinted_version(clock):
    core = following(clock)
    clock.advance(RP)
    assert core.hinted(Versioned(rec(renew=1_700_000_300.0), "v-hinted"))
    hinted_at = clock.now
    core.next_action()
    clock.advance(L - 0.01)  # not yet: the lease counts from the hint
    core.wait_done()
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(rec(renew=1_700_000_300.0), "v-hinted"))
    wait = core.next_action()
    assert isinstance(wait, Wait) and wait.until == pytest.approx(hinted_at + L)
    clock.advance(0.02)
    core.wait_done()
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(rec(renew=1_700_000_300.0), "v-hinted"))
    take = core.next_action()
    assert isinstance(take, Update) and take.expected_version == "v-hinted"
    assert take.record.holder == "me" and take.record.transitions == 5


def test_a_hint_that_was_never_stored_only_costs_a_conflict(clock):
    """The hinted value lost (the local acceptor took a write a quorum never chose): the
    takeover against it is refused, and the follower reads and starts over."""
    core = following(clock)
    clock.advance(RP)
    assert core.hinted(Versioned(rec(renew=1_700_000_300.0), "v-unchosen"))
    core.next_action()
    clock.advance(L)
    core.wait_done()
    core.next_action()
    core.read_done(Versioned(rec(renew=1_700_000_300.0), "v-unchosen"))  # (what this node still sees)
    take = core.next_action()
    assert isinstance(take, Update)
    core.failed(Conflict("the stored version is another"))
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(rec(renew=1_700_000_400.0), "v-chosen"))
    assert not core.leading and isinstance(core.next_action(), Wait)


@pytest.mark.parametrize(
    "hint",
    [
        pytest.param(Versioned(rec(holder="third"), "v1"), id="a new holder"),
        pytest.param(Versioned(rec(holder=""), "v1"), id="a release"),
        pytest.param(Versioned(rec(transitions=5), "v1"), id="a new term"),
        pytest.param(Versioned(rec(acquire_time=1.0), "v1"), id="another acquire time"),
        pytest.param(Versioned(rec(lease_duration=L * 2), "v1"), id="another lease"),
        pytest.param(Versioned(rec(preferred_holder="me"), "v1"), id="a step-down request"),
        pytest.param(Versioned(rec(extra={"once": 1}), "v1"), id="new extra keys"),
        pytest.param(Versioned(rec(renew=1_700_000_100.0), "v1"), id="an older renew time"),
        pytest.param(Versioned(rec(), "v0"), id="the version already seen"),
        pytest.param(Versioned(LeaderRecord.undecodable(4, "not JSON"), "v1"), id="garbage"),
    ],
)
def test_anything_but_a_renewal_is_read(clock, hint):
    core = following(clock)
    observed_at = core.observed_at
    clock.advance(RP)
    assert not core.hinted(hint)
    core.wait_done()
    assert isinstance(core.next_action(), Read)
    assert core.observed_at == observed_at and core.observed.version == "v0"


def test_no_hint_is_taken_when_a_stop_or_a_back_off_is_pending(clock):
    core = following(clock)
    core.request_stop()
    assert not core.hinted(Versioned(rec(renew=1_700_000_300.0), "v1"))

    core = following(clock)
    core.wait_done()
    core.next_action()
    core.failed(ConnectionError("the read failed"))  # back off for a retry period
    assert not core.hinted(Versioned(rec(renew=1_700_000_300.0), "v1"))


def test_a_hint_is_not_taken_for_our_own_record_or_by_a_leader(clock):
    core = make(clock)
    core.next_action()
    core.read_done(None)
    core.next_action()
    core.write_done("v-mine")
    assert core.leading
    assert not core.hinted(Versioned(LeaderRecord(holder="me", transitions=1, renew_time=2e9), "v-x"))

    other = make(clock, identity="other")  # follows a record that names itself (an old term)
    other.next_action()
    other.read_done(Versioned(rec(), "v0"))
    other.next_action()
    assert not other.hinted(Versioned(rec(renew=1_700_000_300.0), "v1"))


# --- the drivers -----------------------------------------------------------------------


TIMING = dict(lease_duration=2.0, renew_deadline=1.2, retry_period=0.1)
#: a standby's waits end every retry period at the latest, with a read: here less often than
#: the leader renews, so that waits end with a renewal (at the default timing the leader
#: renews every 0.9-1.0 and a standby reads every 1.0-1.2 retry periods)
STANDBY = {**TIMING, "retry_period": 0.5}


class Hinting(Misbehaving):
    """A memory lock whose change notification carries the record, as the gossip backend's
    local acceptor does; ``reads`` counts only the engine's own reads."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.hints = 0

    def wait_for_change_hinted(self, version, timeout):
        self.wait_for_change(version, timeout)
        got = self.inner.get(timeout)
        if got is not None and got.version != version:
            self.hints += 1
            return got
        return None


def _follows_without_reading(lock: Hinting, observed_version) -> None:
    """Twenty renewals of the leader go by as hints; the standby read at most twice more,
    and what it observes keeps moving on with the leader's renewals."""
    hints0, reads0 = lock.hints, len(lock.reads)
    while lock.hints - hints0 < 20:
        time.sleep(0.05)
    assert len(lock.reads) - reads0 <= 2, lock.reads[reads0:]
    seen: set[str] = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(seen) < 3:  # it keeps up, hint after hint
        seen.add(observed_version())
        time.sleep(0.03)
    assert len(seen) >= 3, seen


def test_a_thread_driver_standby_follows_renewals_by_hints_and_takes_over():
    backend = MemoryBackend(uuid.uuid4().hex)
    leader = Election("job", backend=backend, identity="leader", release_on_cancel=False, **TIMING).start()
    lock = Hinting(backend.lock("job"))
    standby = Election("job", lock=lock, identity="standby", **STANDBY)
    try:
        assert leader.wait_until_leader(5)
        token = leader.token
        standby.start()
        _follows_without_reading(lock, lambda: standby._core.observed.version)
        assert standby.leader == "leader" and not standby.is_leader
        leader.stop()  # no release: the standby waits the lease out, then takes over
        assert standby.wait_until_leader(10)
        assert standby.token == token + 1
    finally:
        standby.stop()
        leader.stop()


def test_an_asyncio_standby_follows_renewals_by_hints_in_its_watch_thread_and_takes_over():
    async def main() -> None:
        backend = MemoryBackend(uuid.uuid4().hex)
        leader = Election("job", backend=backend, identity="leader", release_on_cancel=False, **TIMING).start()
        lock = Hinting(backend.lock("job"))
        standby = AsyncElection("job", lock=lock, identity="standby", **STANDBY)
        try:
            assert leader.wait_until_leader(5)
            token = leader.token
            await standby.start()
            await asyncio.to_thread(_follows_without_reading, lock, lambda: standby._core.observed.version)
            assert all(name.startswith("celery-leader-watch") for name in lock.watch_threads)
            assert standby.leader == "leader" and not standby.is_leader
            await asyncio.to_thread(leader.stop)
            assert await standby.wait_until_leader(10)
            assert standby.token == token + 1
        finally:
            await standby.stop()
            leader.stop()

    asyncio.run(main())
