"""``run --health-port`` under hostile clients: idle connections cannot exhaust the
descriptors the election needs, and /healthz answers again once they time out."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from celery_leader.health import MAX_CONNECTIONS, _BoundedServer, connection_cap
from tests.servers import free_port, wait_for_port

CLI = [sys.executable, "-m", "celery_leader"]
FAST = ["--lease-duration", "1", "--renew-deadline", "0.6", "--retry-period", "0.2"]
LIMIT = 64
#: the health server's cap inside `run` under that descriptor limit (connection_cap)
RUN_CAP = min(MAX_CONNECTIONS, LIMIT // 8)


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def healthz(port: int, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def test_idle_connections_do_not_starve_the_election(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_LEADER_URL")}
    proc = subprocess.Popen(
        [*CLI, "run", "--url", f"file://{locks}", "--name", "job", "--identity", "a",
         "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5",
         "--health-port", str(port), "--", "sleep", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_low_fd_limit,
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while (healthz(port) or {}).get("leading") is not True and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (healthz(port) or {}).get("token") == 1
        # more idle, half-open connections than the process has descriptors, kept up all the
        # time: one the server closes (over the cap, or timed out) is opened again at once, so
        # without the cap the descriptors stay exhausted for longer than the renew deadline
        stop = threading.Event()
        opened = [0]

        def half_open() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.send(b"GET /healthz HTTP/1.1\r\n")  # ...and never the rest
            opened[0] += 1
            return s

        def keep_pressure(share: int) -> None:
            mine = [half_open() for _ in range(share)]
            idle.extend(mine)
            while not stop.is_set():
                for i, s in enumerate(mine):
                    try:
                        closed = s.recv(1, socket.MSG_DONTWAIT) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed and not stop.is_set():
                        s.close()
                        try:
                            mine[i] = half_open()
                            idle.append(mine[i])
                        except OSError:
                            pass
                stop.wait(0.05)

        def descriptors() -> int:
            try:
                return len(os.listdir(f"/proc/{proc.pid}/fd"))
            except OSError:
                return 0

        base = descriptors()
        most = [base]

        def sample() -> None:
            while not stop.is_set():
                most[0] = max(most[0], descriptors())
                stop.wait(0.01)

        lease = locks / "job.lease.json"
        first = json.loads(lease.read_text())["renewTime"]
        threads = [threading.Thread(target=sample, daemon=True)] + [threading.Thread(target=keep_pressure, args=((LIMIT + 16) // 8,), daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while json.loads(lease.read_text())["renewTime"] - first < 6000 and time.monotonic() < deadline:
            time.sleep(0.1)  # two lease durations of renewals while the pressure lasts
        record = json.loads(lease.read_text())
        stop.set()
        for t in threads:
            t.join(10)
        assert opened[0] >= LIMIT + 16
        # the cap, not luck, bounds what hostile clients hold: the connections served at once,
        # one being refused, and the renewal's own two files
        assert base > 0 and most[0] <= base + RUN_CAP + 4, (base, most[0], RUN_CAP)
        assert record["renewTime"] - first >= 6000, "renewals stopped while idle connections were open"
        assert record["holderIdentity"] == "a" and record["leaderTransitions"] == 1
        answer = None
        deadline = time.monotonic() + 20
        while answer is None and time.monotonic() < deadline:
            answer = healthz(port)
        assert answer is not None and answer["leading"] and answer["token"] == 1
        assert proc.poll() is None
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Too many open files" not in err and "stopped leading (token 1): renewals failed" not in err, err[-3000:]


def test_connections_over_the_cap_are_closed_at_once() -> None:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        timeout = 30

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(204)
            self.end_headers()

    server = _BoundedServer(("127.0.0.1", 0), Handler, 2)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert extra.recv(1) == b"", "a third connection must be closed by the server"
        extra.close()
    finally:
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()


def test_the_cap_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(16) == min(16, max(1, soft // 8)) or soft == resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--health-port", "70000"], "from 0 to 65535"),
        (["--health-port", "-5"], "from 0 to 65535"),
        (["--health-host", "no-such-host.invalid", "--health-port", "0"], "--health-host"),
        (["--health-host", "192.0.2.1", "--health-port", "0"], "--health-host"),
    ],
)
def test_bad_health_address_is_one_line_exit_2(tmp_path: Path, args, words) -> None:
    out = subprocess.run(
        [*CLI, "run", "--url", f"file://{tmp_path}", "--name", "job", *FAST, *args, "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr


def test_health_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*CLI, "run", "--url", f"file://{tmp_path}", "--name", "job", *FAST, "--health-port", str(port), "--", "true"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        taken.close()
    assert out.returncode == 2 and "in use" in out.stderr and "Traceback" not in out.stderr, out.stderr
