"""Capabilities that do something: open_backend(require=...) refuses, and a backend that is
not partition-safe (Redis Sentinel) is named in status, Django checks and beat start-up."""

from __future__ import annotations

import logging

import pytest

from celery_leader import cli
from celery_leader.lock import CAPABILITY_NAMES, ConfigurationError, partition_warning
from celery_leader.registry import open_backend
from tests.servers import free_port

SENTINEL = "redis+sentinel://:s3cret@127.0.0.1:{port}/mymaster/0"


def sentinel_url() -> str:
    return SENTINEL.format(port=free_port())  # nothing listens: nothing here connects


def test_a_backend_with_every_required_capability_opens() -> None:
    backend = open_backend("memory://caps", require=CAPABILITY_NAMES)
    backend.close()
    open_backend("memory://caps", require="watch").close()  # one name as a string


@pytest.mark.parametrize(
    ("url", "require", "words"),
    [
        (sentinel_url(), ["partition_safe"], ["is not partition_safe"]),
        (sentinel_url(), ["linearizable", "partition_safe"], ["not linearizable and not partition_safe"]),
        ("git+file:///srv/never-opened.git", "watch", ["is not watch"]),
    ],
    ids=["sentinel-partition", "sentinel-both", "git-watch"],  # (the URLs hold free ports: not stable ids)
)
def test_a_backend_lacking_a_required_capability_is_refused(url: str, require, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        open_backend(url, require=require)
    for word in words:
        assert word in str(err.value)
    assert "s3cret" not in str(err.value)


def test_an_unknown_capability_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown capability 'partition_proof'.*known: linearizable"):
        open_backend("memory://caps", require=["partition_proof"])


def test_partition_warning_names_the_backend_without_its_secret() -> None:
    memory = open_backend("memory://caps")
    sentinel = open_backend(sentinel_url())
    try:
        assert partition_warning(memory) is None
        warning = partition_warning(sentinel)
        assert warning is not None and "not partition-safe" in warning and "s3cret" not in warning
        assert "\n" not in warning
    finally:
        memory.close()
        sentinel.close()


def test_status_warns_on_stderr_and_keeps_stdout_for_the_record(capsys) -> None:
    code = cli.main(["status", "--url", sentinel_url(), "--name", "beat", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code != 0  # no sentinel answers; the warning came first anyway
    assert "warning:" in err and "not partition-safe" in err and "s3cret" not in err + out
    assert "partition" not in out
    assert cli.main(["status", "--url", "memory://caps", "--name", "beat"]) == 0
    assert "partition" not in capsys.readouterr().err


def test_beat_start_up_logs_the_warning(caplog) -> None:
    from celery_leader.integrations.celery.beat import _check_url

    with caplog.at_level(logging.WARNING, logger="celery_leader"):
        _check_url(sentinel_url())
        _check_url("memory://caps")
    warnings = [r.getMessage() for r in caplog.records if "partition-safe" in r.getMessage()]
    assert len(warnings) == 1 and "s3cret" not in warnings[0]
