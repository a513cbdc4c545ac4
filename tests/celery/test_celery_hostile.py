"""``celery beat -S leader`` start-up errors: one line naming the setting, no password, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "tests.celery.app"]


def run_beat(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CLT_", "CELERY_LEADER_URL"))}
    environ.update(CLT_IDENTITY="beat0", **env)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [*CELERY, "beat", "-S", "leader", "-l", "info", "-s", str(tmp_path / "s.db")],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CLT_LOCK_URL": "redis://leader:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1:6379/0?prefx=x"}, "unknown redis:// option"),
        ({"CLT_LOCK_URL": "redis://leader:Sup3r/Secr?t#Pw@rd@127.0.0.1:6379/0"}, "percent-encode"),
        ({"CLT_LOCK_URL": "redis://leader:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1:6379/0?protocol=9"}, "protocol"),
        ({"CLT_LOCK_URL": "redis://[::1/13"}, "leader_election_url"),
        ({"CLT_BASE": "no.such.module:Scheduler"}, "leader_election_scheduler"),
        ({"CLT_LOCK_URL": "memory://x", "CLT_LEASE": "1.0", "CLT_RENEW": "2.0"}, "leader_election_lease_duration"),
    ],
    ids=["mistyped-option", "unencoded-password", "bad-protocol", "bad-ipv6", "bad-base", "bad-timing"],
)
def test_beat_start_up_errors_are_one_line(tmp_path, env, words) -> None:
    done = run_beat(tmp_path, **env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "celery-leader: configuration error" in line]
    assert len(lines) == 1 and words in lines[0], output[-3000:]
    for piece in ("Sup3r", "Secr", "Pw@rd", "%2FSecr"):
        assert piece not in output


def test_beat_with_a_wrong_password_stops_with_one_line(tmp_path) -> None:
    """The backend rejects the credentials at the first tick (election start): same one line."""
    from tests.servers import port_open, unavailable

    if not port_open(6379):
        unavailable("Redis on 127.0.0.1:6379 is needed")
    done = run_beat(tmp_path, CLT_LOCK_URL="redis://nosuchuser:Sup3r%2FSecr%3Ft%23Pw%40rd@127.0.0.1:6379/0")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "refused the credentials" in output or "needs authentication" in output, output[-3000:]
    for piece in ("Sup3r", "Secr", "%2FSecr"):
        assert piece not in output


def test_settings_of_the_wrong_type_are_configuration_errors() -> None:
    from celery import Celery

    from celery_leader.errors import ConfigurationError
    from celery_leader.integrations.celery.beat import leader_config
    from celery_leader.integrations.celery.worker import check, parse_queues

    app = Celery("hostile", set_as_current=False)
    app.conf.update(leader_election_url=5)
    with pytest.raises(ConfigurationError, match="leader_election_url must be a lock URL string"):
        leader_config(app)
    app = Celery("hostile", set_as_current=False)
    app.conf.update(leader_election_url="memory://x", leader_election_worker_queues=5)
    with pytest.raises(ConfigurationError, match="leader_election_worker_queues"):
        check(app)
    with pytest.raises(ConfigurationError):
        parse_queues({"a": 1})
    assert parse_queues(["a", " b ", "a"]) == ["a", "b"]


def test_distinct_queues_get_distinct_elections() -> None:
    from celery import Celery

    from celery_leader.core import validate_name
    from celery_leader.integrations.celery.beat import leader_config
    from celery_leader.integrations.celery.worker import _election_suffix

    queues = ["a b", "a-b", "a/b", "a_b", "a.b", "a_20b", "a_2Fb", "a.", "a", "é", "e\u0301", "celery"]
    suffixes = [_election_suffix(q) for q in queues]
    assert len(set(suffixes)) == len(queues), dict(zip(queues, suffixes))
    app = Celery("hostile", set_as_current=False)
    app.conf.update(leader_election_url="memory://x", leader_election_name="app")
    names = {leader_config(app, suffix=s).name for s in suffixes}
    assert len(names) == len(queues)
    for name in names:
        validate_name(name)
    # plain names keep the election name earlier versions gave them
    assert _election_suffix("high-priority") == "queue.high-priority"
    assert _election_suffix("tasks.default") == "queue.tasks.default"
