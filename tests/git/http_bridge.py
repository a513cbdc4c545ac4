"""A small HTTP-to-CGI bridge in front of ``git http-backend`` (the real git server code).

Run as a separate process so that tests can SIGSTOP it (a stalled server) or kill it::

    GIT_BRIDGE_AUTH=USER:TOKEN python tests/git/http_bridge.py --root DIR --port PORT

Every repository under ``--root`` is exported and accepts pushes (``http.receivepack``
is set for the CGI through ``GIT_CONFIG_*``, so the repositories need no configuration).
With ``GIT_BRIDGE_AUTH`` set, every request needs that Basic credential, else 401, like a hosting
service. Each response is written in one piece (header and body together) so that a
keep-alive client does not wait on Nagle and delayed ACK.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class GitCGIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "celery-leader-test-bridge/1"
    root: str = ""
    auth: str | None = None  # "user:token"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        head = [f"HTTP/1.1 {status} {reason}"]
        head += [f"{k}: {v}" for k, v in headers]
        head += [f"Content-Length: {len(body)}", "", ""]
        self.wfile.write("\r\n".join(head).encode("latin-1") + body)
        self.wfile.flush()

    def _authorized(self) -> str | None:
        """The user name if the request carries the required credential ("" if none is required)."""
        if self.auth is None:
            return ""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            given = base64.b64decode(header[6:]).decode()
        except ValueError:
            return None
        if not hmac.compare_digest(given, self.auth):
            return None
        return given.split(":", 1)[0]

    def _serve(self) -> None:
        body = self._read_body()
        user = self._authorized()
        if user is None:
            self._reply(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n")
            return
        url = urlsplit(self.path)
        env = {
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": user,
        }
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "GIT_PROTOCOL")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        raw = proc.stdout
        sep = raw.find(b"\r\n\r\n")
        sep_len = 4
        if sep < 0:
            sep, sep_len = raw.find(b"\n\n"), 2
        if sep < 0:
            self._reply(502, "Bad Gateway", [], proc.stderr or b"no CGI response\n")
            return
        status, reason, headers = 200, "OK", []
        for line in raw[:sep].decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif key.lower() != "content-length":
                headers.append((key.strip(), value.strip()))
        self._reply(status, reason or "OK", headers, raw[sep + sep_len :])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    GitCGIHandler.root = args.root
    GitCGIHandler.auth = os.environ.get("GIT_BRIDGE_AUTH") or None
    server = ThreadingHTTPServer(("127.0.0.1", args.port), GitCGIHandler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
