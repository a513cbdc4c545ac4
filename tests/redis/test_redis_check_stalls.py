"""The start-up check on a Redis that stalls or refuses scripts (found by the chaos harness).

A server that does not answer ``SCRIPT LOAD`` in time says nothing about scripting: the
check must stay :class:`BackendUnavailable` (``check_once`` logs it and the election
retries), not become the ConfigurationError "does not accept Lua scripts" that made a new
candidate exit at a load average of 27. A server that answers the command with an error
still gets that ConfigurationError.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from celery_leader.errors import BackendUnavailable, ConfigurationError
from celery_leader.registry import open_backend


class FakeRedis:
    """Speaks just enough RESP: HELLO and PING answered, anything else OK, ``SCRIPT`` as configured."""

    def __init__(self, script: str) -> None:
        self.script = script  # "stall" | "error"
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    command, buf = _parse(buf)
                    if command is None:
                        break
                    name = command[0].upper()
                    if name == b"SCRIPT":
                        if self.script == "stall":
                            continue  # never answer
                        conn.sendall(b"-ERR unknown command 'SCRIPT'\r\n")
                    elif name == b"HELLO":  # RESP3 handshake: a map with the protocol
                        conn.sendall(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                    elif name == b"PING":
                        conn.sendall(b"+PONG\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


def _parse(buf: bytes) -> tuple[list[bytes] | None, bytes]:
    """One RESP array of bulk strings from ``buf``, or (None, buf) if incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None, buf
    head, rest = buf.split(b"\r\n", 1)
    items: list[bytes] = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, buf
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None, buf
        items.append(rest[:size])
        rest = rest[size + 2 :]
    return items, rest


@pytest.fixture
def fake() -> Iterator:
    servers: list[FakeRedis] = []

    def make(script: str) -> FakeRedis:
        servers.append(FakeRedis(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_stalled_script_load_is_unavailable_not_a_configuration_error(fake) -> None:
    server = fake("stall")
    backend = open_backend(f"redis://127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BackendUnavailable) as caught:
            backend.check(0.5)
        assert not isinstance(caught.value, ConfigurationError)
        assert "does not accept Lua scripts" not in str(caught.value)
        backend.check_once(0.5)  # logged, not raised: the election retries
        assert not getattr(backend, "_checked", False)
    finally:
        backend.close()


def test_a_server_that_refuses_scripts_is_still_a_configuration_error(fake) -> None:
    server = fake("error")
    backend = open_backend(f"redis://127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(ConfigurationError, match="Lua scripts"):
            backend.check(2.0)
    finally:
        backend.close()
