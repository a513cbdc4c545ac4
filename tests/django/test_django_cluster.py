"""Three ``celery-leader run --url django://pg`` processes (the generic CLI, outside manage.py):
SIGKILL, SIGTERM and SIGSTOP of the leader never give two leaders, tokens only grow."""

from __future__ import annotations

import pytest

from celery_leader.testing.cluster import ElectorCluster

from .conftest import subprocess_env

LEASE, RENEW, RETRY = 1.0, 0.6, 0.2


@pytest.mark.processes
def test_three_electors_on_postgres_kill_term_stop(pg_alias, tmp_path) -> None:
    with ElectorCluster(
        f"django://{pg_alias}",
        "cluster",
        n=3,
        workdir=tmp_path,
        lease_duration=LEASE,
        renew_deadline=RENEW,
        retry_period=RETRY,
        env=subprocess_env(),  # DJANGO_SETTINGS_MODULE: the backend calls django.setup()
    ) as c:
        i = c.wait_for_leader(timeout=30)
        c.kill(i)  # no release: the others wait out the lease
        j = c.wait_for_leader(timeout=30, exclude={i})
        c.terminate(j)  # graceful release
        k = c.wait_for_leader(timeout=30, exclude={i, j})
        c.restart(i)
        c.pause(k, seconds=2.5)  # frozen past its lease: the restarted node takes over
        c.wait_for_leader(timeout=30, exclude={k})
        report = c.check()
    print(report.summary())
    report.assert_safe()
    tokens = [iv.token for iv in report.intervals]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert len(report.intervals) >= 4
