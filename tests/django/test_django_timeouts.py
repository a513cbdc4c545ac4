"""django:// behind a network that stops forwarding: every call ends at its deadline with
BackendUnavailable (client side, whatever the driver), the hung connection is dropped, and
an election whose database hangs ends its term by the renew deadline and stops cleanly."""

from __future__ import annotations

import time
import uuid

import pytest
from django.db import connections

from benchmarks.tcpproxy import TcpProxy
from celery_leader import Election
from celery_leader.errors import BackendUnavailable
from celery_leader.testing import sample_record
from django_leader.backend import DjangoBackend

#: generous: the contract is "returns at its deadline"; before the fix these calls hung
#: for the kernel's TCP retransmission time (minutes)
BOUND = 10.0


@pytest.fixture(params=["pg", "maria"])
def proxied(request):
    """(alias, proxy): a database alias whose connections go through a TCP proxy."""
    alias = request.getfixturevalue(f"{request.param}_alias")
    real = connections.settings[alias]
    proxy = TcpProxy(int(real["PORT"]))
    name = f"{alias}-proxy-{uuid.uuid4().hex[:6]}"
    connections.settings[name] = {**real, "PORT": str(proxy.port), "OPTIONS": dict(real.get("OPTIONS") or {})}
    try:
        yield name, proxy
    finally:
        proxy.close()
        connections.settings.pop(name, None)


def timed(call):
    started = time.monotonic()
    try:
        call()
    except BackendUnavailable as exc:
        return time.monotonic() - started, exc
    raise AssertionError("the call did not fail although the network hangs")


def test_calls_on_a_hung_network_end_at_their_deadline(proxied) -> None:
    alias, proxy = proxied
    backend = DjangoBackend(alias)
    lock = backend.lock(f"hung-{uuid.uuid4().hex[:8]}")
    try:
        version = lock.create(sample_record(transitions=1), 5.0)
        proxy.set_mode("blackhole")
        took, exc = timed(lambda: lock.update(sample_record(transitions=1, renew_time=5.0), version, 1.0))
        assert took < BOUND, f"update(timeout=1.0) took {took:.1f} s"
        assert "no answer within" in str(exc) or "timeout" in str(exc).lower()
        took, _ = timed(lambda: lock.get(1.0))  # a new connection through the hung path
        assert took < BOUND, f"get(timeout=1.0) took {took:.1f} s"
        proxy.set_mode("pass")
        got = lock.get(5.0)  # the hung connections were dropped, not reused
        assert got is not None and got.version == version
    finally:
        proxy.set_mode("pass")
        backend.close()


def test_an_election_on_a_hung_database_ends_its_term_and_stops(proxied) -> None:
    alias, proxy = proxied
    backend = DjangoBackend(alias)
    ended: list[float] = []
    election = Election(
        f"hung-{uuid.uuid4().hex[:8]}", backend=backend, identity="a",
        lease_duration=3.0, renew_deadline=2.0, retry_period=0.5,
        on_stopped_leading=lambda: ended.append(time.monotonic()),
    )  # fmt: skip
    election.start()
    try:
        deadline = time.monotonic() + 30
        while not election.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)
        assert election.is_leader
        hung_at = time.monotonic()
        proxy.set_mode("blackhole")
        while not ended and time.monotonic() < hung_at + 30:
            time.sleep(0.02)
        assert ended and not election.is_leader
        stopping = time.monotonic()
        election.stop()
        assert time.monotonic() - stopping < BOUND, "stop() was stuck behind a hung call"
    finally:
        proxy.set_mode("pass")
        election.stop()
        backend.close()
