"""The election state machine with a fake clock: client-go's cases, and ours."""

from __future__ import annotations

import gc

import pytest

from celery_leader.core import (
    Create,
    ElectionCore,
    Finished,
    NewLeader,
    Phase,
    Read,
    StartedLeading,
    StoppedLeading,
    Timing,
    Update,
    Wait,
    validate_identity,
    validate_name,
)
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict, Versioned
from celery_leader.record import ANY_HOLDER, LeaderRecord

L, RD, RP = 10.0, 6.0, 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, identity: str = "me", **timing) -> ElectionCore:
    t = Timing(**{"lease_duration": L, "renew_deadline": RD, "retry_period": RP, **timing})
    return ElectionCore("job", identity, t, clock, rand=lambda: 0.0)


def held(holder: str = "other", transitions: int = 4, lease: float = L, version: str = "v-other", **kw) -> Versioned:
    return Versioned(LeaderRecord(holder=holder, lease_duration=lease, transitions=transitions, **kw), version)


def lead(core: ElectionCore, version: str = "v1") -> Create:
    """Drive a core from scratch to leading on an absent lock."""
    assert isinstance(core.next_action(), Read)
    core.read_done(None)
    action = core.next_action()
    assert isinstance(action, Create)
    core.write_done(version)
    return action


# --- acquiring -------------------------------------------------------------------------


def test_acquire_when_no_lock_object_exists(clock):
    core = make(clock)
    create = lead(core)
    assert create.record.holder == "me" and create.record.transitions == 1
    assert core.leading and core.token == 1
    assert core.deadline == pytest.approx(clock.now + L * 0.98)
    assert StartedLeading(core.term, 1) in core.pop_events()


def test_new_object_starts_above_every_token_seen(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(transitions=41))
    clock.advance(L + 0.1)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(held(holder="", transitions=41))
    core.next_action()  # takes the free lock... and loses the race
    core.failed(Conflict("gone"))
    core.next_action()
    core.read_done(None)  # a free lock that vanished can be created at once
    action = core.next_action()
    assert isinstance(action, Create) and action.record.transitions == 42


def test_a_held_lock_that_vanishes_is_waited_out_for_its_lease(clock):
    """Deleted by hand while held: its holder may still lead until its lease runs out."""
    core = make(clock)
    core.next_action()
    core.read_done(held(transitions=41, lease=L))
    clock.advance(1)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(None)
    vanished_at = clock.now
    for _ in range(3):
        action = core.next_action()
        assert isinstance(action, Wait), action
        assert action.until <= vanished_at + L
        clock.advance(min(RP, vanished_at + L - clock.now - 0.01))
        core.wait_done()
        core.next_action()
        core.read_done(None)
    clock.advance(vanished_at + L - clock.now)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(None)
    action = core.next_action()
    assert isinstance(action, Create) and action.record.transitions == 42


def test_led_unexpired_lock_is_not_taken(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held())
    for _ in range(4):
        action = core.next_action()
        assert isinstance(action, Wait)
        assert action.version == "v-other"
        assert action.until <= clock.now + L
        clock.advance(min(RP, L - 0.5 - (clock.now - 1000.0)) if clock.now - 1000.0 < L - 0.5 else 0)
        core.wait_done()
        assert isinstance(core.next_action(), Read)
        core.read_done(held())  # unchanged
    assert not core.leading


def test_expired_lock_is_taken_with_the_next_token(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(transitions=4))
    wait = core.next_action()
    assert isinstance(wait, Wait)
    clock.advance(L)  # exactly the lease after we saw it change
    core.wait_done()
    core.next_action()
    core.read_done(held(transitions=4))
    action = core.next_action()
    assert isinstance(action, Update)
    assert action.expected_version == "v-other"
    assert action.record.holder == "me" and action.record.transitions == 5
    core.write_done("v2")
    assert core.leading and core.token == 5


def test_follower_wakes_exactly_at_expiry(clock):
    core = make(clock, retry_period=4.0, renew_deadline=6.0)
    core.next_action()
    core.read_done(held(lease=5.0))
    clock.advance(3.0)
    core.next_action()  # the wait
    core.wait_done()
    core.next_action()
    core.read_done(held(lease=5.0))
    wait = core.next_action()
    assert isinstance(wait, Wait)
    assert wait.until == pytest.approx(1000.0 + 5.0)  # expiry, before the next 4 s poll


def test_a_changed_record_restarts_the_expiry_clock(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(version="a"))
    clock.advance(L - 1)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(held(version="b"))  # the holder renewed
    clock.advance(2)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(held(version="b"))
    assert isinstance(core.next_action(), Wait)  # L + 1 since first seen, but only 2 s since the change


def test_free_lock_is_taken_at_once(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(holder="", transitions=7))
    action = core.next_action()
    assert isinstance(action, Update) and action.record.transitions == 8


def test_record_lease_longer_than_local_config_wins(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(lease=30.0))
    clock.advance(L + 1)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(held(lease=30.0))
    assert isinstance(core.next_action(), Wait)
    clock.advance(30.0 - L - 1)
    core.wait_done()
    core.next_action()
    core.read_done(held(lease=30.0))
    assert isinstance(core.next_action(), Update)


def test_lost_acquire_race_rereads(clock):
    core = make(clock)
    core.next_action()
    core.read_done(None)
    assert isinstance(core.next_action(), Create)
    core.failed(Conflict("exists"))
    assert isinstance(core.next_action(), Read)
    core.read_done(held(holder="winner"))
    assert isinstance(core.next_action(), Wait)
    assert not core.leading
    assert NewLeader("winner") in core.pop_events()


def test_acquired_too_late_does_not_lead(clock):
    core = make(clock)
    core.next_action()
    core.read_done(None)
    core.next_action()
    clock.advance(L)  # the create took longer than the lease
    core.write_done("v1")
    assert not core.leading


# --- renewing --------------------------------------------------------------------------


def test_renew_fast_path_uses_last_version_and_extends_from_send_time(clock):
    core = make(clock)
    lead(core, "v1")
    assert isinstance(core.next_action(), Wait)
    clock.advance(RP)
    renew = core.next_action()
    assert isinstance(renew, Update) and renew.expected_version == "v1"
    assert renew.record.transitions == 1 and renew.record.renew_time == clock.time()
    sent = clock.now
    clock.advance(0.5)  # the write takes a while
    core.write_done("v2")
    assert core.deadline == pytest.approx(sent + L * 0.98)
    assert core.last_written_version == "v2"


def test_a_renewal_leaves_nothing_tracked_behind(clock):
    """Issue 21: what outlives a renewal by a retry period reaches CPython's oldest GC
    generation, and enough of those start a full collection, which walks every election of
    the process (pausing its event loop). A plain renewal moves only the renew time, so the
    core keeps the term's record and that time (a float), and nothing new the collector
    tracks: not the record it sent, not a ``Versioned`` wrapper, not a fresh list."""
    core = make(clock)
    lead(core, "v1")

    def kept() -> dict[int, object]:
        return {id(o): o for o in gc.get_referents(core) if gc.is_tracked(o)}

    for version in ("v2", "v3"):
        clock.advance(RP)
        assert isinstance(core.next_action(), Update)
        core.write_done(version)
    before = kept()
    clock.advance(RP)
    renew = core.next_action()
    assert isinstance(renew, Update)
    core.write_done("v4")
    new = [o for key, o in kept().items() if key not in before]
    assert new == []
    # and what was written is still there to read, renew time and all
    assert core.observed == Versioned(renew.record, "v4") and core.observed_holder == "me"
    assert core.held == renew.record and core.held.renew_time == renew.record.renew_time
    assert core.held.extra is renew.record.extra


def _state(core: ElectionCore) -> dict[str, object]:
    """Every slot of a core, with records by value and the in-flight call left out."""
    out: dict[str, object] = {}
    for cls in type(core).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name in ("_inflight", "__weakref__", "clock", "rand") or not hasattr(core, name):
                continue
            value = getattr(core, name)
            out[name] = vars(value) if isinstance(value, LeaderRecord) else value
    out["observed"], out["held"] = core.observed, core.held
    return out


@pytest.mark.parametrize("step", ["renew", "renew after a failed one", "renew with extra keys asked meanwhile"])
def test_the_plain_renewal_shortcut_leaves_what_the_general_path_leaves(step, monkeypatch):
    """A steady leader's renewal answer takes a short path (issue 21); a twin core whose
    renewal is not marked plain takes the general one. Every slot ends the same."""
    shortcuts: list[str] = []
    original = ElectionCore._plain_renewal_done

    def counted(core: ElectionCore, *args: object) -> None:
        shortcuts.append(core.name)
        original(core, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ElectionCore, "_plain_renewal_done", counted)
    states = []
    for plain in (True, False):
        clock = FakeClock()
        core = make(clock)
        lead(core, "v1")
        clock.advance(RP)
        if step == "renew after a failed one":
            assert isinstance(core.next_action(), Update)
            core.failed(BackendUnavailable("timeout"))
            clock.advance(RP)
        action = core.next_action()
        assert isinstance(action, Update) and core._inflight is not None
        if step == "renew with extra keys asked meanwhile":
            core.request_extra({"slot": "s9"})
        if not plain:
            core._inflight.plain = False
        clock.advance(0.01)
        core.write_done("v2")
        states.append(_state(core))
    fast, general = states
    assert fast == general
    # the twin with a plain renewal took the shortcut, unless a failure came first
    assert len(shortcuts) == (0 if step == "renew after a failed one" else 1)
    assert fast["phase"] is Phase.LEADING
    assert fast["observed"] == Versioned(action.record, "v2")


def test_a_renewal_that_carries_extra_keys_becomes_the_terms_record(clock):
    """The term's record is replaced when a renewal changes more than the renew time, and
    later plain renewals keep the new keys."""
    core = make(clock)
    lead(core, "v1")
    assert core.request_extra({"slot": "s1"}) == 1
    marked = core.next_action()
    assert isinstance(marked, Update) and marked.record.extra == {"slot": "s1"}
    core.write_done("v2")
    assert core.extra_written == 1 and core.held == marked.record and core.held.extra == {"slot": "s1"}
    clock.advance(RP)
    plain = core.next_action()
    assert isinstance(plain, Update) and plain.record.extra == {"slot": "s1"}
    assert plain.record.renew_time > marked.record.renew_time
    core.write_done("v3")
    assert core.held == plain.record and core.observed == Versioned(plain.record, "v3")


def test_renew_conflict_falls_back_to_read_and_keeps_a_record_still_ours(clock):
    core = make(clock)
    lead(core, "v1")
    clock.advance(RP)
    core.next_action()
    core.failed(Conflict("changed"))
    assert core.leading
    assert isinstance(core.next_action(), Read)
    mine = core.held
    core.read_done(Versioned(mine, "v1b"))  # somebody touched it, still ours
    renew = core.next_action()
    assert isinstance(renew, Update) and renew.expected_version == "v1b"


def test_renew_conflict_with_another_holder_ends_the_term(clock):
    core = make(clock)
    lead(core, "v1")
    core.pop_events()
    clock.advance(RP)
    core.next_action()
    core.failed(Conflict("changed"))
    core.next_action()
    core.read_done(held(holder="thief", transitions=2))
    assert not core.leading
    events = core.pop_events()
    assert any(isinstance(e, StoppedLeading) for e in events)


def test_failed_renewals_end_the_term_at_renew_deadline_and_never_extend_it(clock):
    core = make(clock)
    lead(core, "v1")
    deadline = core.deadline
    core.pop_events()
    while core.leading:
        action = core.next_action()
        if not core.leading:
            break  # the term ended when its renew deadline came
        if isinstance(action, Wait):
            clock.advance(action.until - clock.now)
            core.wait_done()
            continue
        assert isinstance(action, Update)
        core.failed(BackendUnavailable("down"))
        assert core.deadline == deadline
    assert clock.now - 1000.0 >= RD
    assert clock.now < deadline
    assert isinstance(core.pop_events()[0], StoppedLeading)


def test_renew_deadline_ends_the_term_while_a_renewal_is_in_flight(clock):
    """Issue 14.6: give up at (send time of the last successful write + renew_deadline), hung call or not."""
    core = make(clock)
    lead(core, "v1")
    core.pop_events()
    clock.advance(RP)
    renew = core.next_action()
    assert isinstance(renew, Update)
    assert renew.timeout <= RD - RP  # never past the renew deadline either
    clock.advance(RD - RP - 0.001)
    assert core.is_leader() and not core.check_deadline()
    clock.advance(0.001)  # renew_deadline after the last successful send; the call still hangs
    assert not core.is_leader()
    assert core.check_deadline()
    (stopped,) = core.pop_events()
    assert isinstance(stopped, StoppedLeading) and "renew_deadline" in stopped.reason
    # the work's shutdown window is intact: the lease deadline is still ahead
    assert core.deadline - clock.now == pytest.approx(L * (1 - 2 * 0.01) - RD)
    core.write_done("v-late")  # the hung renewal lands late: no revival
    assert not core.leading and not core.pop_events()


def test_an_acquisition_answered_after_renew_deadline_does_not_lead(clock):
    core = make(clock)
    assert isinstance(core.next_action(), Read)
    core.read_done(None)
    assert isinstance(core.next_action(), Create)
    clock.advance(RD)  # the answer comes when the term would already have to give up
    core.write_done("v1")
    assert not core.leading and not core.is_leader()


def test_leader_stops_at_its_deadline_while_a_call_hangs(clock):
    core = make(clock)
    lead(core, "v1")
    clock.advance(RP)
    renew = core.next_action()
    assert isinstance(renew, Update)
    assert renew.timeout <= core.deadline - clock.now
    clock.advance(L)  # the call hangs past the deadline
    assert not core.is_leader()  # live check: fail closed before anybody notices
    assert core.check_deadline()
    assert not core.leading
    # the hung write finally succeeds: no term starts from it
    core.write_done("v-late")
    assert not core.leading
    events = core.pop_events()
    stopped = next(i for i, e in enumerate(events) if isinstance(e, StoppedLeading))
    assert not any(isinstance(e, StartedLeading) for e in events[stopped:])


def test_own_record_is_retaken_only_with_a_new_token(clock):
    core = make(clock)
    lead(core, "v1")
    clock.advance(L)
    core.check_deadline()
    action = core.next_action()
    assert isinstance(action, Read)
    core.read_done(Versioned(core.held, "v1"))
    retake = core.next_action()
    assert isinstance(retake, Update) and retake.record.transitions == 2


def test_same_identity_from_elsewhere_is_treated_as_another_holder(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(holder="me", version="written-by-a-previous-process"))
    assert isinstance(core.next_action(), Wait)


# --- releasing -------------------------------------------------------------------------


def test_stop_releases_with_compare_and_swap_retrying_conflicts(clock):
    core = make(clock)
    lead(core, "v1")
    core.pop_events()
    core.request_stop()
    assert isinstance(core.next_action(), Read)
    assert isinstance(core.pop_events()[0], StoppedLeading)
    core.read_done(Versioned(core.held, "v1"))
    release = core.next_action()
    assert isinstance(release, Update) and release.release
    assert release.record.holder == "" and release.record.transitions == 1
    core.failed(Conflict("somebody touched it"))
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(core.held, "v1c"))
    release = core.next_action()
    assert isinstance(release, Update) and release.expected_version == "v1c"
    core.write_done("v-free")
    assert isinstance(core.next_action(), Finished)


def test_stop_after_the_term_releases_a_renewal_whose_answer_was_lost(clock):
    """The term ended while a renewal went unanswered; a read then shows that write landed.
    The lock is ours under a version we never got an answer for: a stop releases it (a
    compare-and-swap against that version) instead of leaving it silently to its lease."""
    core = make(clock)
    lead(core, "v1")
    clock.advance(RP)
    renew = core.next_action()
    assert isinstance(renew, Update) and not renew.release
    core.failed(BackendUnavailable("no answer"))  # ... but it landed as "v2"
    clock.advance(RD)
    assert core.check_deadline() and not core.leading
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(renew.record, "v2"))
    assert core.may_hold()
    core.request_stop()
    assert isinstance(core.next_action(), Read)  # a release reads first
    core.read_done(Versioned(renew.record, "v2"))
    release = core.next_action()
    assert isinstance(release, Update) and release.release, release
    assert release.expected_version == "v2" and release.record.holder == ""


def test_release_skips_a_lock_that_is_no_longer_ours(clock, caplog):
    core = make(clock)
    lead(core, "v1")
    core.request_stop()
    core.next_action()
    core.read_done(held(holder="other", transitions=2))
    with caplog.at_level("INFO", logger="celery_leader"):
        assert isinstance(core.next_action(), Finished)
    # said, not silent: a stop ends with either "released the lock" or this
    assert "job: nothing to release: the lock is held by other" in caplog.text
    assert "released the lock" not in caplog.text


def test_release_gives_up_after_renew_deadline(clock):
    core = make(clock)
    lead(core, "v1")
    core.request_stop()
    while True:
        action = core.next_action()
        if isinstance(action, Finished):
            break
        if isinstance(action, Wait):
            clock.advance(action.until - clock.now)
            continue
        core.failed(BackendUnavailable("down"))
    assert clock.now - 1000.0 >= RD


def test_stop_without_release_on_cancel(clock):
    core = ElectionCore("job", "me", Timing(L, RD, RP), clock, release_on_cancel=False)
    lead(core)
    core.request_stop()
    assert isinstance(core.next_action(), Finished)


def test_step_down_releases_and_waits_a_lease_before_trying_again(clock):
    core = make(clock)
    lead(core, "v1")
    core.request_step_down()
    core.next_action()
    core.read_done(Versioned(core.held, "v1"))
    release = core.next_action()
    assert isinstance(release, Update) and release.release
    core.write_done("v-free")
    action = core.next_action()
    assert isinstance(action, Read)
    core.read_done(Versioned(release.record, "v-free"))
    assert isinstance(core.next_action(), Wait)  # does not grab it back at once
    clock.advance(L)
    core.wait_done()
    core.next_action()
    core.read_done(Versioned(release.record, "v-free"))
    assert isinstance(core.next_action(), Update)


def test_step_down_request_in_record_hands_over_to_the_preferred_candidate(clock):
    leader = make(clock, identity="me")
    lead(leader, "v1")
    clock.advance(RP)
    leader.next_action()
    leader.failed(Conflict("marked"))
    leader.next_action()
    leader.read_done(Versioned(leader.held.evolve(preferred_holder="them"), "v-marked"))
    assert isinstance(leader.next_action(), Read)  # the release read
    assert not leader.leading
    leader.read_done(Versioned(leader.held.evolve(preferred_holder="them"), "v-marked"))
    release = leader.next_action()
    assert isinstance(release, Update) and release.record.preferred_holder == "them"
    freed = Versioned(release.record, "v-free")
    # the preferred candidate takes it at once; a third one defers for a lease
    them, third = make(clock, identity="them"), make(clock, identity="third")
    for core in (them, third):
        core.next_action()
        core.read_done(freed)
    assert isinstance(them.next_action(), Update)
    assert isinstance(third.next_action(), Wait)


def test_step_down_to_anybody_is_not_kept_in_the_free_record(clock):
    core = make(clock)
    lead(core, "v1")
    marked = Versioned(core.held.evolve(preferred_holder=ANY_HOLDER), "v-marked")
    clock.advance(RP)
    core.next_action()
    core.failed(Conflict("marked"))
    core.next_action()
    core.read_done(marked)
    core.next_action()
    core.read_done(marked)
    release = core.next_action()
    assert isinstance(release, Update) and release.record.preferred_holder == ""


# --- garbage ---------------------------------------------------------------------------


def test_garbage_is_held_for_a_local_lease_then_overwritten_above_tokens_seen(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(transitions=9, version="a"))
    garbage = Versioned(LeaderRecord.undecodable(11, "not JSON"), "g1")
    clock.advance(1)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(garbage)
    assert isinstance(core.next_action(), Wait)
    clock.advance(L)
    core.wait_done()
    core.next_action()
    core.read_done(garbage)
    action = core.next_action()
    assert isinstance(action, Update) and action.expected_version == "g1"
    assert action.record.transitions == 10


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lease_duration=0), "lease_duration must be"),
        (dict(renew_deadline=-1), "renew_deadline must be"),
        (dict(retry_period="2"), "retry_period must be"),
        (dict(lease_duration=5, renew_deadline=5), "greater than renew_deadline"),
        (dict(lease_duration=15, renew_deadline=2, retry_period=2), "1.2 x retry_period"),
        (dict(lease_duration=10, renew_deadline=9.9, retry_period=1, max_drift=0.01), "no time to stop"),
        (dict(max_drift=0.5), "max_drift"),
        # not finite, absurdly long, or too short to be sane
        (dict(lease_duration=float("inf")), "lease_duration must be a finite number"),
        (dict(lease_duration=1e300, renew_deadline=10), "at most 86400"),
        (dict(lease_duration=float("nan")), "lease_duration must be a finite number"),
        (dict(lease_duration=86401, renew_deadline=10), "one day"),
        (dict(renew_deadline=float("inf")), "renew_deadline must be a finite number"),
        (dict(lease_duration=1, renew_deadline=0.6, retry_period=0.001), "at least 0.01"),
        (dict(max_drift=float("nan")), "max_drift must be a finite number"),
        (dict(jitter=float("inf")), "jitter must be a finite number"),
        (dict(retry_period=True), "retry_period must be"),
    ],
)
def test_invalid_timing_is_refused_with_the_reason(kwargs, words):
    with pytest.raises(ConfigurationError, match=words):
        Timing(**kwargs)


def test_client_go_defaults_are_valid():
    t = Timing()
    assert (t.lease_duration, t.renew_deadline, t.retry_period) == (15.0, 10.0, 2.0)
    assert t.op_timeout == 5.0


@pytest.mark.parametrize("identity", ["", "   ", None, 42, ANY_HOLDER, "a\nb"])
def test_bad_identity_is_refused(identity):
    with pytest.raises(ConfigurationError, match="identity"):
        validate_identity(identity)


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x-", "a b", "é", "x" * 300])
def test_bad_name_is_refused(name):
    with pytest.raises(ConfigurationError, match="election name"):
        validate_name(name)


def test_garbage_placeholder_token_is_respected(clock):
    """A backend that keeps a counter reports it on the placeholder: the next term goes above it."""
    core = make(clock)
    garbage = Versioned(LeaderRecord(transitions=17, decode_error="not JSON (9 bytes)"), "g1")
    core.next_action()
    core.read_done(garbage)
    clock.advance(L)
    core.next_action()
    core.wait_done()
    core.next_action()
    core.read_done(garbage)
    action = core.next_action()
    assert isinstance(action, Update) and action.record.transitions == 18


def test_a_renewal_answered_after_the_deadline_does_not_revive_the_term(clock):
    core = make(clock)
    lead(core, "v1")
    clock.advance(RP)
    core.next_action()  # the renewal is sent in time...
    clock.advance(L)  # ...and answered after the deadline, before the watchdog fired
    assert not core.is_leader()
    core.write_done("v2")
    assert not core.leading and not core.is_leader()
    assert any(isinstance(e, StoppedLeading) for e in core.pop_events())


def test_an_acquisition_that_landed_without_an_answer_is_retaken_at_once(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(holder="", transitions=3))
    attempt = core.next_action()
    assert isinstance(attempt, Update)
    core.failed(BackendUnavailable("timed out"))  # ...but the write landed
    clock.advance(RP)
    core.next_action()
    core.read_done(Versioned(attempt.record, "v-landed"))
    retake = core.next_action()
    assert isinstance(retake, Update) and retake.expected_version == "v-landed"
    assert retake.record.transitions == 5


def test_a_record_with_our_identity_but_not_our_write_is_waited_out(clock):
    core = make(clock)
    core.next_action()
    core.read_done(held(holder="", transitions=3))
    attempt = core.next_action()
    core.failed(BackendUnavailable("timed out"))
    clock.advance(RP)
    core.next_action()
    other = attempt.record.evolve(acquire_time=attempt.record.acquire_time + 5)  # same identity, elsewhere
    core.read_done(Versioned(other, "v-other"))
    assert isinstance(core.next_action(), Wait)


# --- extra record keys (once-per slots) --------------------------------------------------


def test_extra_keys_go_out_at_once_with_a_renewal_cas_and_survive_a_lost_race(clock):
    core = make(clock)
    lead(core, "v1")
    core.pop_events()
    seq = core.request_extra({"celeryLeaderLastSlot": "k"})
    renew = core.next_action()  # at once, not at the next retry period
    assert isinstance(renew, Update) and renew.expected_version == "v1" and not renew.release
    assert renew.record.extra == {"celeryLeaderLastSlot": "k"}
    core.failed(Conflict("somebody wrote"))  # e.g. a step-down marker landed first
    assert core.extra_written < seq
    assert isinstance(core.next_action(), Read)
    core.read_done(Versioned(LeaderRecord(holder="me", lease_duration=L, transitions=1, preferred_holder=""), "v2"))
    again = core.next_action()
    assert isinstance(again, Update) and again.expected_version == "v2"
    assert again.record.extra == {"celeryLeaderLastSlot": "k"}  # still pending: carried again
    core.write_done("v3")
    assert core.extra_written >= seq
    clock.advance(RP)
    later = core.next_action()
    assert isinstance(later, Update) and later.record.extra == {"celeryLeaderLastSlot": "k"}  # kept by renewals


def test_extra_keys_are_not_written_once_the_term_ended(clock):
    core = make(clock)
    lead(core, "v1")
    assert core.request_extra({"k": 1}) is not None
    clock.advance(L)  # the deadline passes before the write went out
    action = core.next_action()
    assert not (isinstance(action, Update) and "k" in action.record.extra)
    assert not core.leading
    assert core.request_extra({"k": 2}) is None  # not leading: refused
