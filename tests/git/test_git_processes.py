"""Three ``celery-leader run`` processes on one ``git daemon``: SIGKILL, SIGTERM, SIGSTOP of the leader.

Real processes, real signals, a real git server; the children's own logs are the evidence
(see :mod:`celery_leader.testing.cluster`), and the server's ref is checked with git itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_leader.testing.failover import kill_term_stop

from .conftest import Servers, git

pytestmark = pytest.mark.processes

def test_three_electors_on_git_daemon(git_servers: Servers, tmp_path: Path) -> None:
    repo = git_servers.new_repo("electors")
    outcome = kill_term_stop(git_servers.url("daemon", repo), workdir=tmp_path / "run")
    tokens = [iv.token for iv in outcome.report.intervals]

    # the server holds exactly one parentless commit for the lock, whatever happened
    ref = "refs/celery-leader/beat"
    assert git(repo, "rev-list", "--count", ref) == "1"
    record = json.loads(git(repo, "show", f"{ref}:beat.lock.json"))
    assert record["leaderTransitions"] >= max(tokens)
