"""In-process tests of :class:`celery_leader.beat.LeaderScheduler` (memory:// lock, kombu memory broker).

They pin the rules that the process tests can only observe from outside: no election in
``__init__``, a standby's tick is short and sends nothing, every send carries the fencing
token, and a stalled backend stops sending by the lease deadline although the election
thread is stuck in a backend call.
"""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery, signals
from celery.beat import PersistentScheduler, Scheduler

from celery_leader import ConfigurationError, Election
from celery_leader.backends.memory import MemoryBackend
from celery_leader.beat import HEADER_TOKEN, LeaderScheduler

RETRY = 0.2


def make_app(ns: str, **conf) -> Celery:
    app = Celery(f"inproc-{ns}", broker="memory://", set_as_current=False)
    app.conf.update(
        result_backend=None,
        result_expires=None,
        beat_max_loop_interval=0.1,
        beat_schedule={"often": {"task": "inproc.often", "schedule": 0.05}},
        leader_election_url=f"memory://{ns}",
        leader_election_name="inproc.beat",
        leader_election_identity="me",
        leader_election_lease_duration=1.0,
        leader_election_renew_deadline=0.6,
        leader_election_retry_period=RETRY,
        leader_election_scheduler="celery.beat:Scheduler",
    )
    app.conf.update(conf)
    return app


@pytest.fixture
def ns() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def published():
    sent: list[dict] = []

    def receiver(sender=None, headers=None, **_):
        if sender == "inproc.often":
            sent.append(dict(headers or {}))

    signals.before_task_publish.connect(receiver, weak=False)
    yield sent
    signals.before_task_publish.disconnect(receiver)


@pytest.fixture
def scheduler_for(ns):
    made: list[LeaderScheduler] = []

    def make(**conf) -> LeaderScheduler:
        sched = LeaderScheduler(app=make_app(ns, **conf))
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.close()


def tick_for(sched: LeaderScheduler, seconds: float) -> list[float]:
    intervals, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        interval = sched.tick()
        intervals.append(interval)
        time.sleep(max(0.0, min(interval, 0.05)))
    return intervals


def test_wraps_the_base_by_subclassing_and_starts_nothing_in_init(ns, tmp_path):
    app = make_app(ns, leader_election_scheduler="celery.beat:PersistentScheduler")
    sched = LeaderScheduler(app=app, schedule_filename=str(tmp_path / "schedule"))
    assert type(sched).__name__ == "LeaderPersistentScheduler"
    assert isinstance(sched, PersistentScheduler) and isinstance(sched, LeaderScheduler)
    lazy = LeaderScheduler(app=make_app(ns), lazy=True)
    assert type(lazy).__name__ == "LeaderScheduler" or isinstance(lazy, Scheduler)
    assert sched.election is None and lazy.election is None
    assert MemoryBackend.from_url(f"memory://{ns}").lock("inproc.beat").get(1.0) is None
    info = lazy.info
    assert "leader election -> inproc.beat on memory://" in info and "identity -> me" in info
    assert "catch-up: skip" in sched.info  # per-host shelve store
    sched.close()


def test_standby_sends_nothing_and_ticks_within_the_retry_period(ns, scheduler_for, published):
    with Election("inproc.beat", url=f"memory://{ns}", identity="other", lease_duration=1.0,
                  renew_deadline=0.6, retry_period=RETRY) as other:  # fmt: skip
        assert other.wait_until_leader(5)
        sched = scheduler_for()
        intervals = tick_for(sched, 1.5)
        assert published == []
        assert max(intervals) <= RETRY
        assert sched.election is not None and sched.election.leader == "other"


def test_leader_stamps_the_token_and_stops_when_leadership_ends(ns, scheduler_for, published):
    sched = scheduler_for()
    deadline = time.monotonic() + 5
    while not published and time.monotonic() < deadline:
        time.sleep(max(0.0, min(sched.tick(), 0.05)))
    assert published, "the only candidate never sent"
    assert {h[HEADER_TOKEN] for h in published} == {sched.election.token}
    sched.election.step_down()
    deadline = time.monotonic() + 5
    while sched.election.is_leader and time.monotonic() < deadline:
        time.sleep(0.02)
    count = len(published)
    intervals = tick_for(sched, 1.0)
    assert len(published) == count, "sent after stepping down"
    assert max(intervals) <= RETRY


def test_a_stalled_backend_stops_sends_by_the_lease_deadline(ns, scheduler_for, published):
    """The election thread hangs in a backend call; the live deadline still ends sending."""
    sched = scheduler_for()
    deadline = time.monotonic() + 5
    while not published and time.monotonic() < deadline:
        time.sleep(max(0.0, min(sched.tick(), 0.02)))
    assert published
    with MemoryBackend.from_url(f"memory://{ns}").stalled():
        stalled_at = time.monotonic()
        stamps = []
        while time.monotonic() - stalled_at < 2.0:
            before = len(published)
            # stamped before the tick: a send in it was decided at or after this time, so a
            # late-scheduled thread cannot make an in-time send look late
            ticked = time.monotonic() - stalled_at
            sched.tick()
            if len(published) > before:
                stamps.append(ticked)
            time.sleep(0.01)
    assert stamps == [] or max(stamps) < 1.0, f"sent {max(stamps):.3f}s after the backend stalled (lease 1 s)"
    assert not sched.election.is_leader


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"leader_election_catch_up": "sometimes"}, "leader_election_catch_up"),
        ({"leader_election_lease_duration": 1.0, "leader_election_renew_deadline": 3.0}, "leader_election_lease_duration"),
        ({"leader_election_retry_period": "soon"}, "leader_election_retry_period"),
        ({"leader_election_name": "no spaces please"}, "leader_election_name"),
        ({"leader_election_url": "nosuch://x"}, "leader_election_url"),
        ({"leader_election_scheduler": "celery_leader.beat:LeaderScheduler"}, "leader_election_scheduler"),
        ({"leader_election_scheduler": "json:dumps"}, "leader_election_scheduler"),
    ],
)
def test_configuration_errors_name_the_setting(ns, conf, message):
    with pytest.raises(ConfigurationError, match=message):
        LeaderScheduler(app=make_app(ns, **conf))


class CountingLeaderScheduler(LeaderScheduler, Scheduler):
    """A user's own combination: used as is, with a reload hook."""

    reloads = 0

    def reload_schedule(self) -> None:
        type(self).reloads += 1
        super().reload_schedule()


def test_a_user_subclass_is_used_as_is_and_reloads_on_each_term(ns, published):
    sched = CountingLeaderScheduler(app=make_app(ns))
    try:
        assert type(sched) is CountingLeaderScheduler
        assert "catch-up: skip" in sched.info and "wraps -> celery.beat.Scheduler" in sched.info  # per-host base
        deadline = time.monotonic() + 5
        while not published and time.monotonic() < deadline:
            time.sleep(max(0.0, min(sched.tick(), 0.02)))
        assert published and CountingLeaderScheduler.reloads == 1
    finally:
        sched.close()


class SlowScheduler(Scheduler):
    """A base whose tick takes longer than the lease (a slow broker, a huge schedule)."""

    slow = 0.0

    def tick(self, *args, **kwargs):
        time.sleep(type(self).slow)
        return super().tick(*args, **kwargs)


def test_a_tick_longer_than_the_lease_keeps_leadership(ns, published):
    """Renewal runs in the election's thread: a 2.5 s tick does not lose a 1 s lease (RedBeat's #129)."""
    sched = LeaderScheduler(app=make_app(ns, leader_election_scheduler=SlowScheduler))
    try:
        deadline = time.monotonic() + 5
        while not published and time.monotonic() < deadline:
            time.sleep(max(0.0, min(sched.tick(), 0.02)))
        token = sched.election.token
        assert published and token is not None
        SlowScheduler.slow = 2.5
        try:
            sched.tick()
        finally:
            SlowScheduler.slow = 0.0
        assert sched.election.is_leader and sched.election.token == token
        count = len(published)
        deadline = time.monotonic() + 2
        while len(published) == count and time.monotonic() < deadline:
            time.sleep(max(0.0, min(sched.tick(), 0.02)))
        assert len(published) > count and {h[HEADER_TOKEN] for h in published} == {token}
    finally:
        sched.close()


def test_a_standby_logs_at_info_once_and_a_lost_term_at_warning(ns, scheduler_for, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="celery_leader")
    with Election("inproc.beat", url=f"memory://{ns}", identity="other", lease_duration=1.0,
                  renew_deadline=0.6, retry_period=RETRY) as other:  # fmt: skip
        assert other.wait_until_leader(5)
        sched = scheduler_for()
        tick_for(sched, 1.0)
        lines = [r for r in caplog.records if "beat is" in r.getMessage()]
        assert [(r.levelname, r.getMessage()) for r in lines] == [("INFO", "celery-leader: beat is standby (leader: other)")]
        other.step_down()  # hands over to us
        deadline = time.monotonic() + 10
        while not (sched.election.is_leader and sched.election.leadership is not None) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(sched.tick(), 0.05)))
        tick_for(sched, 0.3)
        sched.election.step_down()  # our term ends: that one is worth a warning
        deadline = time.monotonic() + 5
        while sched.election.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)
        tick_for(sched, 0.5)
    states = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records if "beat is" in r.getMessage()]
    assert states[:3] == [("INFO", "celery-leader: beat is standby"), ("INFO", "celery-leader: beat is leading"),
                          ("WARNING", "celery-leader: beat is standby")], states  # fmt: skip
