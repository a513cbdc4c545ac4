"""Redis with restrictive ACLs and foreign data: a refused notification never fails a
write that landed, permission errors name the ACL rule to add, a bad fence names its key.

ACL users are created on the shared Redis under a unique name and deleted afterwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from celery_leader import Election
from celery_leader.errors import ConfigurationError
from celery_leader.testing import sample_record

T = 5.0
FAST = dict(lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)


@pytest.fixture
def acl_user(shared_redis: redis.Redis, prefix: str) -> Iterator[Callable[..., str]]:
    """``acl_user(*rules)`` -> a redis:// URL for a fresh ACL user with those rules."""
    made: list[str] = []
    try:
        shared_redis.execute_command("ACL", "WHOAMI")
    except redis.ResponseError as exc:  # pragma: no cover - ACLs exist since Redis 6
        pytest.skip(f"no ACLs on this Redis: {exc}")

    def make(*rules: str) -> str:
        name = f"hardening-{uuid.uuid4().hex[:10]}"
        shared_redis.execute_command("ACL", "SETUSER", name, "on", ">pw-Sup3r", "resetchannels", *rules)
        made.append(name)
        return f"redis://{name}:pw-Sup3r@127.0.0.1:6379/0?prefix={prefix}"

    yield make
    for name in made:
        shared_redis.execute_command("ACL", "DELUSER", name)


def test_a_refused_notification_does_not_fail_a_write_that_landed(acl_user, prefix, open_backend, caplog) -> None:
    """Redis 7's default acl-pubsub-default resetchannels: writes land, PUBLISH is refused."""
    backend = open_backend(acl_user(f"~{prefix}*", "+@all"))
    lock = backend.lock("beat")
    caplog.set_level(logging.WARNING)
    version = lock.create(sample_record(transitions=1), T)
    got = lock.get(T)
    assert got is not None and got.version == version and got.record.transitions == 1
    version = lock.update(sample_record(transitions=1, renew_time=2.0), version, T)
    assert lock.get(T).version == version
    warnings = [r.getMessage() for r in caplog.records if "notification was refused" in r.getMessage()]
    assert len(warnings) == 1 and f"&{prefix}*" in warnings[0]
    with pytest.raises(ConfigurationError) as info:
        backend.check(T)
    assert f"&{prefix}*" in str(info.value) and "pw-Sup3r" not in str(info.value)


def test_an_election_without_channel_permission_leads_and_keeps_its_token(acl_user, prefix, open_backend) -> None:
    backend = open_backend(acl_user(f"~{prefix}*", "+@all"))
    # the start-up check refuses the missing channel permission; the engine itself must
    # still cope with it, so run it past the check as a careless operator's wrapper would
    backend.check = lambda timeout=5.0: None  # type: ignore[method-assign]
    terms: list[int] = []
    election = Election("beat", backend=backend, identity="a", on_started_leading=lambda lead: terms.append(lead.token), **FAST)
    election.start()
    try:
        deadline = time.monotonic() + 20
        while not election.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)
        assert election.is_leader and election.token == 1
        time.sleep(2.0)  # ten retry periods: every renewal writes (and fails to publish)
        assert election.is_leader and election.token == 1, "tokens burned: a landed write was taken as failed"
        assert terms == [1]
    finally:
        election.stop()


@pytest.mark.parametrize(
    ("rules", "rule"),
    [
        (["~other:*", "&*", "+@all"], "~{prefix}*"),
        (["~{prefix}*", "&*", "+@all", "-evalsha", "-eval"], "+eval"),
        (["~{prefix}*", "&*", "+@all", "-publish"], "+publish"),
    ],
    ids=["keys", "scripts", "publish"],
)
def test_permission_errors_name_the_acl_rule(acl_user, prefix, open_backend, rules, rule) -> None:
    rule = rule.format(prefix=prefix)
    backend = open_backend(acl_user(*(r.format(prefix=prefix) for r in rules)))
    with pytest.raises(ConfigurationError) as info:
        backend.check(T)
    assert rule in str(info.value), info.value
    if rule != "+publish":
        with pytest.raises(ConfigurationError) as info:
            backend.lock("beat").get(T)
        assert rule in str(info.value)


def test_the_check_passes_with_the_rules_it_names(acl_user, prefix, open_backend) -> None:
    backend = open_backend(acl_user("~other:*"))
    rules = backend.acl_rules().split()
    backend = open_backend(acl_user(*rules))
    backend.check(T)
    lock = backend.lock("beat")
    lock.update(sample_record(transitions=2), lock.create(sample_record(transitions=1), T), T)


@pytest.mark.parametrize("field", ["transitions", "writes"])
def test_a_non_integer_fence_is_a_configuration_error_naming_the_key(shared_redis, prefix, open_backend, field) -> None:
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock = backend.lock("beat")
    version = lock.create(sample_record(transitions=1), T)
    shared_redis.hset(f"{prefix}fence:beat", field, "not-a-number")
    with pytest.raises(ConfigurationError) as info:
        if field == "transitions":
            lock.get(T)
        else:
            lock.update(sample_record(transitions=1), version, T)
    assert f"{prefix}fence:beat" in str(info.value)
    with pytest.raises(ConfigurationError, match="fence"):
        lock.update(sample_record(transitions=2), version, T)


def test_a_huge_value_is_read_only_in_part_and_replaced_by_compare_and_swap(shared_redis, prefix, open_backend) -> None:
    backend = open_backend(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    lock = backend.lock("beat")
    shared_redis.set(f"{prefix}lock:beat", b"x" * (5 * 1024 * 1024))
    got = lock.get(T)
    assert got is not None and got.record.decode_error and "larger than" in got.record.decode_error
    shared_redis.set(f"{prefix}lock:beat", b"y" * (5 * 1024 * 1024))  # changed: the old version is stale
    from celery_leader.errors import Conflict

    with pytest.raises(Conflict):
        lock.update(sample_record(transitions=1), got.version, T)
    got = lock.get(T)
    lock.update(sample_record(transitions=1), got.version, T)
    assert lock.get(T).record.decode_error is None
