"""Three ``celery-leader run`` processes on the real Redis: SIGKILL, SIGTERM and SIGSTOP of
the leader; no overlapping leadership, tokens strictly increase (see
:mod:`celery_leader.testing.failover`)."""

from __future__ import annotations

import os

import pytest

from celery_leader.testing.failover import kill_term_stop


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.processes
def test_three_electors_kill_term_stop(prefix: str, tmp_path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``redis`` (same processes and signals)."""
    outcome = kill_term_stop(f"redis://127.0.0.1:6379/0?prefix={prefix}", workdir=tmp_path)
    print(outcome.report.summary())
