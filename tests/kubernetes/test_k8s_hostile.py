"""Kubernetes messages name the real Lease (never a literal ``{name}``)."""

from __future__ import annotations

import pytest

from celery_leader.errors import BackendUnavailable


def test_an_unreachable_api_server_is_reported_with_the_lease_name(apiserver, backend) -> None:
    lock = backend.lock("my-beat")
    apiserver.stop()
    with pytest.raises(BackendUnavailable) as info:
        lock.get(1.0)
    message = str(info.value)
    assert "{name}" not in message and "{namespace}" not in message
    assert "my-beat" in message
