"""The queue integrations' shared election settings: bad input is one ConfigurationError line."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from celery_leader.errors import ConfigurationError
from celery_leader.integrations._queues import LeaderSettings


@pytest.mark.parametrize("url", [7, b"redis://:hunter2@127.0.0.1:6379/0", PurePosixPath("/tmp/x"), ["redis://"]])
def test_a_url_that_is_not_text_is_a_configuration_error(url: object) -> None:
    # e.g. arq's WorkerSettings.leader_url set to a RedisSettings or bytes object
    with pytest.raises(ConfigurationError, match="leader URL must be a lock URL string") as info:
        LeaderSettings.build(name="x", url=url)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)
