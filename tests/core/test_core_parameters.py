"""Election's spelled-out parameters: timing=Timing(...), and an observer on both drivers."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid

import pytest

from celery_leader import AsyncElection, ConfigurationError, Election, Timing

SHORT = Timing(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


class Recorder:
    def __init__(self) -> None:
        self.renewals: list[bool] = []
        self.states: list[bool] = []
        self.changed = threading.Event()

    def renewed(self, election: object, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.renewals.append(ok)

    def state_changed(self, election: object, leading: bool) -> None:
        self.states.append(leading)
        self.changed.set()


def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def test_every_parameter_is_spelled_out() -> None:
    for cls in (Election, AsyncElection):
        params = inspect.signature(cls).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), cls
        for name in ("url", "backend", "lock", "identity", "timing", "lease_duration", "observer", "on_new_leader"):
            assert name in params, (cls, name)


def test_timing_object_is_used_as_given() -> None:
    e = Election("t", url=url(), timing=SHORT)
    assert e.timing is SHORT
    assert Election("t", url=url(), lease_duration=1.0, renew_deadline=0.6, retry_period=0.2).timing == SHORT
    assert Election("t", url=url()).timing == Timing()  # client-go's defaults


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"timing": SHORT, "lease_duration": 2.0}, "give timing= or lease_duration, not both"),
        ({"timing": {"lease_duration": 1.0}}, "timing= must be a celery_leader.Timing, got dict"),
        ({"lease_duration": 1.0}, "renew_deadline"),  # still validated: 10 s renew deadline > 1 s lease
    ],
)
def test_wrong_timing_is_a_configuration_error(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Election("t", url=url(), **kwargs)


def test_thread_driver_reports_to_its_observer() -> None:
    seen = Recorder()
    with Election("t", url=url(), identity="a", timing=SHORT, observer=seen) as e:
        assert e.wait_until_leader(20)
        assert seen.changed.wait(10)
        for _ in range(400):  # a renewal every 0.2 s; generous on a loaded machine
            if len(seen.renewals) >= 2:
                break
            time.sleep(0.05)
    assert seen.states[0] is True and seen.states[-1] is False
    assert all(seen.renewals)


def test_asyncio_driver_reports_to_its_observer() -> None:
    seen = Recorder()

    async def run() -> None:
        async with AsyncElection("t", url=url(), identity="a", timing=SHORT, observer=seen) as e:
            assert await e.wait_until_leader(20)
            for _ in range(400):
                if len(seen.renewals) >= 2:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    assert seen.states[0] is True and seen.states[-1] is False
    assert len(seen.renewals) >= 2 and all(seen.renewals)
