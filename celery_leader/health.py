"""``/healthz`` and ``/metrics`` for ``celery-leader run --health-port``.

``/healthz`` fails (500) when this process believes it leads but its local deadline has
passed by more than ``tolerance`` seconds: the renewal machinery is stuck, so a supervisor
should restart the process (client-go's HealthzAdaptor). Otherwise it answers 200, leader
or not: a healthy standby is healthy.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["health_status", "serve"]


def health_status(election: Any, tolerance: float = 0.0) -> tuple[bool, dict[str, Any]]:
    core = election._core
    now = time.monotonic()
    stuck = core.leading and now > core.deadline + tolerance
    info = {
        "name": election.name,
        "identity": election.identity,
        "leading": election.is_leader,
        "leader": election.leader,
        "token": election.token,
        "healthy": not stuck,
    }
    if stuck:
        info["reason"] = f"believes it leads but its deadline passed {now - core.deadline:.3f} s ago"
    return not stuck, info


def serve(election: Any, host: str, port: int, metrics: Any = None, tolerance: float = 0.0) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; call ``.shutdown()`` to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] == "/healthz":
                ok, info = health_status(election, tolerance)
                self._send(200 if ok else 500, "application/json", json.dumps(info).encode())
            elif self.path.split("?")[0] == "/metrics" and metrics is not None:
                self._send(200, "text/plain; version=0.0.4", metrics.exposition())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            head = f"HTTP/1.1 {code} {self.responses.get(code, ('',))[0]}\r\nContent-Type: {ctype}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            self.wfile.write(head.encode() + body)  # one write: no Nagle/delayed-ACK stall

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="celery-leader-health", daemon=True).start()
    return server
