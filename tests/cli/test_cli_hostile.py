"""``celery-leader`` against hostile records and bad input: one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_leader.cli import main
from celery_leader.record import LeaderRecord, encode_record

CLI = [sys.executable, "-m", "celery_leader"]

HOSTILE = {
    "deep": b"[" * 5000,
    "huge-number": b'{"holderIdentity":"x","acquireTime":1' + b"0" * 400 + b"}",
    "nan": b'{"holderIdentity":"x","renewTime":NaN}',
    "big": b" " * (70 * 1024) + b"{}",
}


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def lockdir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    return d


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_status_of_a_hostile_record_is_unreadable_not_a_traceback(lockdir, kind, capsys) -> None:
    (lockdir / "job.lease.json").write_bytes(HOSTILE[kind])
    assert main(["status", "--url", f"file://{lockdir}", "--name", "job", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"].startswith("unreadable") and info["holder"] is None


def test_status_escapes_a_holder_that_holds_terminal_controls(lockdir, capsys) -> None:
    evil = "evil\x1b[2J\x1b]0;owned\x07\nINFO forged line\u2028\x9b"
    (lockdir / "job.lease.json").write_bytes(
        encode_record(LeaderRecord(holder=evil, lease_duration=10, renew_time=1, transitions=3, preferred_holder=evil))
    )
    assert main(["status", "--url", f"file://{lockdir}", "--name", "job"]) == 0
    out = capsys.readouterr().out
    for ch in "\x1b\x07\u2028\x9b":
        assert ch not in out
    assert out.count("\n") == 2  # the status line and its caveat: the holder's newline did not add one
    assert "evil\\x1b[2J" in out
    assert main(["status", "--url", f"file://{lockdir}", "--name", "job", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["holder"] == evil  # JSON escapes it, losslessly


def test_status_of_a_hostile_record_in_a_subprocess(lockdir) -> None:
    (lockdir / "job.lease.json").write_bytes(HOSTILE["deep"])
    out = cli("status", "--url", f"file://{lockdir}", "--name", "job")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "unreadable" in out.stdout


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--log-level", "BOGUS", "status", "--name", "job"], {}, "--log-level"),
        (["status", "--name", "job"], {"CELERY_LEADER_LOG_LEVEL": "loud"}, "CELERY_LEADER_LOG_LEVEL"),
        (["status", "--name", "job", "--timeout", "nan"], {}, "--timeout"),
        (["status", "--name", "job", "--timeout", "-1"], {}, "--timeout"),
        (["step-down", "--name", "job", "--timeout", "inf"], {}, "--timeout"),
        (["run", "--name", "job", "--lease-duration", "nan", "--", "true"], {}, "lease_duration"),
        (["run", "--name", "job", "--health-port", "65536", "--", "true"], {}, "--health-port"),
        (["run", "--name", "job", "--health-port", "http", "--", "true"], {}, "--health-port"),
        (["status", "--name", "job\n"], {}, "election name"),
        (["run", "--name", "job", "--identity", "a\u2028b", "--", "true"], {}, "identity"),
        (["step-down", "--name", "job", "--to", "a\x1b[2Jb"], {}, "identity"),
        (["status", "--name", "job", "--url", "redis://[::1/13"], {}, "lock URL"),
        (["status", "--name", "job", "--url", "redis://127.0.0.1:6379/0?ssl_cert_reqs=bogus"], {}, "ssl_cert_reqs"),
        (["status", "--name", "job", "--url", "redis://127.0.0.1:6379/0?protocol=9"], {}, "protocol"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(lockdir, args, env, words) -> None:
    environ = {"CELERY_LEADER_URL": f"file://{lockdir}", **env}
    out = cli(*args, env=environ)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert words in out.stderr
