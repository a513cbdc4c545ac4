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


@pytest.mark.parametrize("command,package", [("huey", "huey"), ("periodiq", "dramatiq"), ("arq", "arq"), ("rq", "rq")])
def test_a_console_script_without_its_framework_is_one_line(command: str, package: str) -> None:
    """The scripts are installed without the extras: a missing framework names the extra, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import sys; sys.modules[{package!r}] = None\n"  # as if it were not installed
            f"from celery_leader.integrations._launch import {command}\n"
            f"sys.exit({command}())")
    result = subprocess.run([sys.executable, "-c", code, "app.x"], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"celery-leader-{command}: ")
    assert lines[0].endswith(f"is not installed: pip install 'celery-leader[{command}]'")
