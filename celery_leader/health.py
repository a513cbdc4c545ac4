"""``/healthz`` and ``/metrics`` for ``celery-leader run --health-port``.

``/healthz`` fails (500) when this process believes it leads but its local deadline has
passed by more than ``tolerance`` seconds: the renewal machinery is stuck, so a supervisor
should restart the process (client-go's HealthzAdaptor). Otherwise it answers 200, leader
or not: a healthy standby is healthy.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import ConfigurationError

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


#: seconds a client may take to send its request and read the answer
REQUEST_TIMEOUT = 2.0
#: connections served at once; more are closed at once (each costs a thread and a descriptor)
MAX_CONNECTIONS = 16


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """At most ``limit``, and at most an eighth of the descriptor limit: the election's own
    files and sockets must never be the ones that run out."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return limit
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(1, min(limit, soft // 8))


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``cap`` connections at once.

    A connection over the cap is closed as soon as it is accepted, so idle or slow clients
    can hold at most ``cap`` descriptors and threads, each for at most ``REQUEST_TIMEOUT``.
    """

    daemon_threads = True
    block_on_close = False
    #: the kernel's accept queue (socketserver's default is 5): a burst of probes waits for a
    #: thread, not for a SYN retransmit (~1 s); queued connections hold no descriptor of ours
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cap: int) -> None:
        self._slots = threading.BoundedSemaphore(cap)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: refuse, keep the descriptor budget
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that times out or resets is not an error worth a traceback


def serve(
    election: Any,
    host: str,
    port: int,
    metrics: Any = None,
    tolerance: float = 0.0,
    *,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; call ``.shutdown()`` to stop it.

    Raises :class:`~celery_leader.errors.ConfigurationError` naming the fix when the
    address cannot be used (port in use, unknown host, port out of range).
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"--health-port must be a port number from 0 to 65535, got {port!r}")

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout  # per connection: a client that sends nothing is dropped

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

    try:
        server = _BoundedServer((host, port), Handler, connection_cap(max_connections))
    except socket.gaierror as exc:
        raise ConfigurationError(f"--health-host {host!r} is not a known address ({exc.strerror}); use e.g. 127.0.0.1") from None
    except OverflowError:
        raise ConfigurationError(f"--health-port must be a port number from 0 to 65535, got {port}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"--health-port {port} on {host} is in use by another process; choose a free port"
            ) from None
        raise ConfigurationError(
            f"cannot serve health on {host}:{port} ({exc.strerror or exc}); check --health-host and --health-port"
        ) from None
    threading.Thread(target=server.serve_forever, name="celery-leader-health", daemon=True).start()
    return server
