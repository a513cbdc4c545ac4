"""Slots, periods and the engine's extra-key writes (in one process, memory backend)."""

from __future__ import annotations

import threading
import uuid

import pytest

from celery_leader import ConfigurationError, Election
from celery_leader.once import LAST_SLOT_KEY, Slot, once_per, parse_period, run_once_per

FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("1d", 86400), ("45", 45), (60, 60)])
def test_periods(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h junk", "-5", "0.5", "nan", "inf", "1h-1m"])
def test_bad_periods_name_the_fix(text):
    with pytest.raises(ConfigurationError, match="period"):
        parse_period(text)


def test_slots_are_utc_aligned_and_end_at_the_next_boundary():
    # 2026-11-29 06:59:59 UTC and 07:00:00 UTC fall in different hourly slots
    before = Slot.every("1h", now=1795935599.0)
    after = Slot.every("1h", now=1795935600.0)
    assert before.key == "2026-11-29T06:00:00Z/1h" and before.ends == 1795935600.0
    assert after.key == "2026-11-29T07:00:00Z/1h"
    assert Slot.every("1d", now=1795935600.0).key == "2026-11-29T00:00:00Z/1d"
    assert Slot.every("90s", now=100.0).key == "1970-01-01T00:01:30Z/90s"


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\there", "é"])
def test_bad_slot_keys(key):
    with pytest.raises(ConfigurationError, match="slot key"):
        Slot.named(key)


def test_period_or_key_exactly_one():
    with pytest.raises(ConfigurationError, match="either"):
        Slot.make("1h", "k")
    with pytest.raises(ConfigurationError, match="either"):
        Slot.make(None, None)


def url() -> str:
    return f"memory://once-{uuid.uuid4().hex[:8]}"


def test_set_extra_is_written_while_leading_and_kept_by_renewals_and_release():
    u = url()
    with Election("job", url=u, **FAST) as election:
        assert election.wait_until_leader(10)
        lead = election.leadership
        assert lead.set_extra({"mine": "x"})
        assert election.lock.get(1).record.extra["mine"] == "x"
        token = lead.token
    got = Election("job", url=u, **FAST).lock.get(1)
    assert got.record.holder == "" and got.record.extra["mine"] == "x" and got.record.transitions == token
    with Election("job", url=u, **FAST) as second:  # a later term copies it too
        assert second.wait_until_leader(10)
        assert second.lock.get(1).record.extra["mine"] == "x"


def test_set_extra_after_the_term_ended_writes_nothing():
    u = url()
    election = Election("job", url=u, **FAST).start()
    assert election.wait_until_leader(10)
    lead = election.leadership
    election.stop()
    assert lead.set_extra({"late": 1}) is False
    assert "late" not in Election("job", url=u, **FAST).lock.get(1).record.extra


def test_run_once_per_runs_once_then_skips_and_a_failure_leaves_the_slot_open():
    u = url()
    runs = []
    with pytest.raises(RuntimeError):
        run_once_per(lambda: (_ for _ in ()).throw(RuntimeError("boom")), name="job", slot="k1", url=u, **FAST)
    first = run_once_per(lambda: runs.append(1) or "value", name="job", slot="k1", url=u, **FAST)
    assert first.ran and first.marked and first.value == "value"
    second = run_once_per(lambda: runs.append(2), name="job", slot="k1", url=u, **FAST)
    assert not second.ran and second.marked and second.reason == "already done"
    assert runs == [1]
    third = run_once_per(lambda: runs.append(3), name="job", slot="k2", url=u, **FAST)
    assert third.ran and runs == [1, 3]


def test_decorator_with_threads_started_together():
    u = url()
    runs = []
    gate = threading.Barrier(3)

    @once_per(name="job", slot=lambda: "fixed", url=u, **FAST)
    def job(tag):
        runs.append(tag)
        return tag

    results = []

    def host(i):
        gate.wait()
        results.append(job(i))

    threads = [threading.Thread(target=host, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(runs) == 1 and results.count(None) == 2
    assert Election("job", url=u, **FAST).lock.get(1).record.extra[LAST_SLOT_KEY] == "fixed"


def test_a_slot_marked_by_a_garbage_record_is_not_trusted():
    assert not Slot.named("k").done_in(None)
    from celery_leader.record import LeaderRecord

    assert not Slot.named("k").done_in(LeaderRecord.undecodable(3, "bad").evolve(extra={LAST_SLOT_KEY: "k"}))


def test_async_set_extra_is_written_while_leading_and_kept_by_the_release():
    import asyncio

    from celery_leader import AsyncElection

    u = url()

    async def scenario() -> int:
        async with AsyncElection("job", url=u, **FAST) as election:
            assert await election.wait_until_leader(10)
            lead = election.leadership
            assert await lead.set_extra({"mine": "x"})
            assert lead.record.extra["mine"] == "x"
            assert election.lock.get(1).record.extra["mine"] == "x"
            token = lead.token
            election.step_down()
            for _ in range(100):
                if not election.is_leader:
                    break
                await asyncio.sleep(0.02)
            assert await lead.set_extra({"late": 1}) is False  # the term ended: nothing written
            return token

    token = asyncio.run(scenario())
    got = Election("job", url=u, **FAST).lock.get(1)
    assert got.record.extra["mine"] == "x" and "late" not in got.record.extra and got.record.transitions == token
