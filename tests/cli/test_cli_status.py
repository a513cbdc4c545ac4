"""``celery-leader status`` tells the truth: held / expired / free, how it judged, and
``--watch`` follows the changes live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_leader import open_backend
from celery_leader.record import LeaderRecord
from celery_leader.status import VANISHED_HOLDERS

CLI = [sys.executable, "-m", "celery_leader"]


def status(url: str, *extra: str) -> dict:
    out = subprocess.run([*CLI, "status", "--url", url, "--name", "job", "--json", *extra],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def url(tmp_path: Path) -> str:
    d = tmp_path / "locks"
    d.mkdir()
    return f"file://{d}"


def write(url: str, record: LeaderRecord) -> None:
    backend = open_backend(url)
    try:
        lock = backend.lock("job")
        got = lock.get(5)
        lock.create(record, 5) if got is None else lock.update(record, got.version, 5)
    finally:
        backend.close()


def read(url: str) -> LeaderRecord | None:
    backend = open_backend(url)
    try:
        got = backend.lock("job").get(5)
        return got.record if got else None
    finally:
        backend.close()


def test_a_lease_that_ran_out_long_ago_is_expired_not_held(url):
    write(url, LeaderRecord(holder="gone-host", lease_duration=1, acquire_time=time.time() - 100,
                            renew_time=time.time() - 100, transitions=4))
    info = status(url)
    assert info["state"] == "expired" and info["holder"] == "gone-host" and info["token"] == 4
    assert info["judged"] == "wall clock" and info["renewed_seconds_ago"] > 99
    # --wait observes it for a lease: unchanged, so expired by observation
    observed = status(url, "--wait")
    assert observed["judged"] == "observed" and observed["state"] == "expired"


def test_a_renewing_leader_is_held_by_wall_clock_and_by_observation(url, tmp_path):
    leader = subprocess.Popen([*CLI, "run", "--url", url, "--name", "job", "--identity", "boss", "--lease-duration", "1",
                               "--renew-deadline", "0.6", "--retry-period", "0.2", "--", "sleep", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while read(url) is None or read(url).holder != "boss":  # in-process: a status call costs a start-up
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = status(url)
        assert info["state"] == "held" and info["judged"] == "wall clock" and info["holder"] == "boss"
        info = status(url, "--wait")
        assert info["state"] == "held" and info["judged"] == "observed" and info["holder"] == "boss"
    finally:
        leader.terminate()
        leader.wait(30)
    after = status(url)
    assert after["state"] == "free" and after["holder"] is None and after["token"] == 1 and after["exists"]


def test_text_output_says_how_it_judged(url):
    write(url, LeaderRecord(holder="h", lease_duration=15, renew_time=time.time(), transitions=2))
    out = subprocess.run([*CLI, "status", "--url", url, "--name", "job"], capture_output=True, text=True, timeout=60)
    assert "job: held by h (token 2), renewed" in out.stdout and "--wait observes" in out.stdout


def test_a_vanished_redis_key_shows_as_free():
    redis = pytest.importorskip("redis")
    from celery_leader.backends.redis import VANISHED_HOLDER
    from tests.servers import unavailable

    assert VANISHED_HOLDER in VANISHED_HOLDERS
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.ping()
    except redis.RedisError:
        unavailable("no Redis on 127.0.0.1:6379")
    prefix = f"test-status-{os.getpid()}-{time.monotonic_ns()}:"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    try:
        write(url, LeaderRecord(holder="h", lease_duration=30, renew_time=time.time(), transitions=3))
        client.delete(prefix + "lock:job")
        info = status(url)
        assert info["state"] == "free" and info["holder"] is None and info["token"] == 3
        assert "vanished" in info["note"] and info["exists"] is False
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)


def test_watch_prints_each_change_and_stops_on_sigterm(url):
    watcher = subprocess.Popen([*CLI, "status", "--url", url, "--name", "job", "--json", "--watch", "--interval", "0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []

    def next_line() -> dict:
        line = watcher.stdout.readline()
        assert line, watcher.stderr.read()
        lines.append(json.loads(line))
        return lines[-1]

    try:
        assert next_line()["state"] == "free"
        now = time.time()
        write(url, LeaderRecord(holder="a", lease_duration=1, acquire_time=now, renew_time=now, transitions=1))
        held = next_line()
        assert held["state"] == "held" and held["holder"] == "a"
        # nobody renews: after one lease of no change the watcher says expired, by observation
        expired = next_line()
        assert expired["state"] == "expired" and expired["judged"] == "observed" and expired["holder"] == "a"
        write(url, LeaderRecord(holder="b", lease_duration=1, acquire_time=time.time(), renew_time=time.time(), transitions=2))
        taken = next_line()
        assert taken["state"] == "held" and taken["holder"] == "b" and taken["token"] == 2
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_status_of_garbage_is_unreadable_and_escapes_nothing(url):
    write(url, LeaderRecord(holder="x", lease_duration=1, transitions=1))
    (Path(url[len("file://"):]) / "job.lease.json").write_bytes(b"\x1b[31mnot json")
    info = status(url)
    assert info["state"] == "unreadable" and info["holder"] is None and "not JSON" in info["note"]
    out = subprocess.run([*CLI, "status", "--url", url, "--name", "job"], capture_output=True, text=True, timeout=60)
    assert "unreadable" in out.stdout and "\x1b" not in out.stdout
