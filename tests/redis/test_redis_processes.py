"""Three ``celery-leader run`` processes on the real Redis: SIGKILL, SIGTERM and SIGSTOP of
the leader; no overlapping leadership, tokens strictly increase (see
:mod:`celery_leader.testing.failover`)."""

from __future__ import annotations

import pytest

from celery_leader.testing.failover import kill_term_stop


@pytest.mark.processes
def test_three_electors_kill_term_stop(prefix: str, tmp_path) -> None:
    outcome = kill_term_stop(f"redis://127.0.0.1:6379/0?prefix={prefix}", workdir=tmp_path)
    print(outcome.report.summary())
