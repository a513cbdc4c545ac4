"""Three ``celery-leader run`` processes on one file:// directory: kill, terminate, pause.

Real processes, real signals; the children's own logs are the evidence (see
:mod:`celery_leader.testing.cluster` and :mod:`celery_leader.testing.failover`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celery_leader.testing.failover import kill_term_stop

pytestmark = pytest.mark.processes


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
def test_kill_terminate_pause_never_two_leaders(tmp_path: Path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``file`` (same processes and signals)."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    kill_term_stop(f"file://{lock_dir}", workdir=tmp_path / "run")
