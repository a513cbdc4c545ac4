"""A TCP proxy on 127.0.0.1 that the chaos harness uses to black-hole or delay a candidate's
connections to its backend (faults that signals cannot produce).

Modes: ``pass`` forwards; ``blackhole`` keeps connections open but forwards nothing (the
peer sees silence, as behind a dropped route); ``delay`` holds each chunk ``delay`` seconds;
``reset`` closes every connection and refuses new ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.delay = 0.0
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        assert mode in ("pass", "blackhole", "delay", "reset"), mode
        with self._changed:
            self.mode, self.delay = mode, delay
            self._changed.notify_all()
        if mode == "reset":
            self._drop_all()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()
        with self._changed:
            self._changed.notify_all()

    def _drop_all(self) -> None:
        for s in list(self._conns):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        self._conns.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._conns.add(s)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._changed:
                    while self.mode == "blackhole" and not self._closed:
                        self._changed.wait()  # hold the bytes: silence, not an error
                    delay = self.delay if self.mode == "delay" else 0.0
                if self._closed or self.mode == "reset":
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
