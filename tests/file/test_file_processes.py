"""Three ``celery-leader run`` processes on one file:// directory: kill, terminate, pause.

Real processes, real signals; the children's own logs are the evidence (see
:mod:`celery_leader.testing.cluster` and :mod:`celery_leader.testing.failover`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_leader.testing.failover import kill_term_stop

pytestmark = pytest.mark.processes


def test_kill_terminate_pause_never_two_leaders(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    kill_term_stop(f"file://{lock_dir}", workdir=tmp_path / "run")
