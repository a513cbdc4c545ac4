"""Smoke test of example_project: the whole story, short, on SQLite and the local Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import port_open, unavailable

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]


def test_story_quick(tmp_path):
    if not port_open(6379):
        unavailable("Redis on 127.0.0.1:6379 is needed by the example project's Celery broker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="exampleproject.settings",
        EXAMPLE_SQLITE=str(tmp_path / "example.sqlite3"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "example_project"), str(ROOT)]),
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "story", "--quick", "--seconds", "3", "--logs", str(tmp_path / "logs")],
        cwd=ROOT / "example_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "logs").glob("*.log")))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    assert "OK: one instance at a time" in done.stdout
    for kind in ("beat:", "apscheduler:", "cron:"):
        assert kind in done.stdout
