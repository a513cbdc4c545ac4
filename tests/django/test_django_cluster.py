"""Three ``celery-leader run --url django://pg`` processes (the generic CLI, outside manage.py):
SIGKILL, SIGTERM and SIGSTOP of the leader never give two leaders, tokens only grow."""

from __future__ import annotations

import os

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import subprocess_env


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("CELERY_LEADER_SOAK") != "1", reason="soak run: set CELERY_LEADER_SOAK=1")
@pytest.mark.processes
def test_three_electors_on_postgres_kill_term_stop(pg_alias, tmp_path) -> None:
    """Soak only: CI's bounded version is tests/chaos lane ``django-postgresql`` (same processes and signals)."""
    # DJANGO_SETTINGS_MODULE: the backend calls django.setup()
    outcome = kill_term_stop(f"django://{pg_alias}", name="cluster", workdir=tmp_path, env=subprocess_env())
    print(outcome.report.summary())
