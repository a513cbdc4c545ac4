"""Three ``celery-leader run --url django://pg`` processes (the generic CLI, outside manage.py):
SIGKILL, SIGTERM and SIGSTOP of the leader never give two leaders, tokens only grow."""

from __future__ import annotations

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import subprocess_env


@pytest.mark.processes
def test_three_electors_on_postgres_kill_term_stop(pg_alias, tmp_path) -> None:
    # DJANGO_SETTINGS_MODULE: the backend calls django.setup()
    outcome = kill_term_stop(f"django://{pg_alias}", name="cluster", workdir=tmp_path, timeout=30.0, env=subprocess_env())
    print(outcome.report.summary())
