"""The CLI never prints a URL's password, and keeps it out of ``ps`` and the command's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import port_open, unavailable

CLI = [sys.executable, "-m", "celery_leader"]
FAST = ["--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2"]
RAW = "Sup3r/Secr?t#Pw@rd"
ENCODED = "Sup3r%2FSecr%3Ft%23Pw%40rd"
PIECES = ("Sup3r", "Secr", "Pw@rd", "%2FSecr")


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_LEADER_URL")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**environ, **(env or {})})


def assert_clean(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} leaked in: {text}"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://leader:{RAW}@127.0.0.1:6379/0",
        f"redis://leader:{ENCODED}@127.0.0.1:6379/0?no_such_option=1",
        f"redis://leader:{ENCODED}@[::1/13",
        f"s3://AKIAEXAMPLE:{ENCODED}@/prefix",
        f"gossip://:{ENCODED}@127.0.0.1:notaport?members=a",
        f"nosuch://leader:{ENCODED}@host",
    ],
)
@pytest.mark.parametrize("command", ["status", "run"])
def test_configuration_errors_are_one_line_without_the_secret(url: str, command: str) -> None:
    args = ["status", "--name", "job", "--url", url]
    if command == "run":
        args = ["run", "--name", "job", "--url", url, *FAST, "--", "true"]
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert_clean(out.stdout + out.stderr)


def test_a_wrong_password_is_reported_without_it() -> None:
    if not port_open(6379):
        unavailable("Redis on 127.0.0.1:6379 is needed")
    out = cli("status", "--name", "job", "--url", f"redis://nosuchuser:{ENCODED}@127.0.0.1:6379/0")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "nosuchuser:***@127.0.0.1" in out.stderr
    assert_clean(out.stdout + out.stderr)


def test_url_file_keeps_the_url_out_of_ps_and_the_command_out_of_it(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    url_file = tmp_path / "url"
    url_file.write_text(f"file://{locks}\n")
    url_file.chmod(0o600)
    dump = tmp_path / "env"
    proc = subprocess.Popen(
        [*CLI, "run", "--url-file", str(url_file), "--name", "job", *FAST, "--",
         "sh", "-c", f"env > {dump}; sleep 30"],
        env={**os.environ, "CELERY_LEADER_URL": f"file://{locks}"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (dump.exists() and "CELERY_LEADER_TOKEN" in dump.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
        assert env["CELERY_LEADER_TOKEN"] == "1"
        assert "CELERY_LEADER_URL" not in env
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert str(locks) not in cmdline and "--url-file" in cmdline
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_url_file_errors(tmp_path: Path) -> None:
    out = cli("status", "--name", "job", "--url-file", str(tmp_path / "missing"))
    assert out.returncode == 2 and "cannot read the lock URL" in out.stderr
    (tmp_path / "url").write_text("memory://x\n")
    out = cli("status", "--name", "job", "--url-file", str(tmp_path / "url"), "--url", "memory://y")
    assert out.returncode == 2 and "not both" in out.stderr
    out = cli("status", "--name", "job", env={"CELERY_LEADER_URL_FILE": str(tmp_path / "url")})
    assert out.returncode == 0, out.stderr
