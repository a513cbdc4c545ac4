"""Fixtures for the etcd backend tests: private ``etcd`` members (Debian's ``etcd-server``)
on free 127.0.0.1 ports in temporary directories, one member or a three-member cluster."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_leader.backends.etcd import EtcdBackend
from tests.servers import Members, closed_afterwards, free_port, need_binary, unavailable


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdCluster(Members):
    """``n`` etcd members on 127.0.0.1 (kill, pause, restart any of them).

    Heartbeat 25 ms, election timeout 250 ms: a lost raft leader is replaced within about a
    second even on a loaded 2-core machine, without spurious elections.
    """

    def __init__(self, workdir: Path, n: int = 1, *extra: str) -> None:
        self.binary = need_binary("etcd", "apt-get install etcd-server")
        self.workdir = workdir
        self.n = n
        self.extra = list(extra)
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.scheme = "http"
        #: (cert, key) the fixture itself presents to a member that demands client certificates
        self.client_cert: tuple[str, str] | None = None

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))

    def endpoints(self, members: list[int] | None = None) -> str:
        chosen = range(self.n) if members is None else members
        return ",".join(f"127.0.0.1:{self.client_ports[i]}" for i in chosen)

    def url(self, prefix: str = "/test", members: list[int] | None = None, userinfo: str = "", query: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"etcd://{at}{self.endpoints(members)}{prefix}" + (f"?{query}" if query else "")

    def argv(self, i: int) -> list[str]:
        client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            self.binary, "--name", f"m{i}", "--data-dir", str(self.workdir / f"m{i}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"t-{self.peer_ports[0]}",
            "--heartbeat-interval", "25", "--election-timeout", "250",
            "--log-level", "warn", "--logger", "zap", "--enable-pprof=false",
            *self.extra,
        ]  # fmt: skip

    def start_member(self, i: int) -> None:
        log = open(self.workdir / f"m{i}.log", "ab")
        self.procs[i] = subprocess.Popen(self.argv(i), stdout=log, stderr=log)
        log.close()

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            self.start_member(i)
        if not self.wait_ready(timeout):
            logs = " | ".join((self.workdir / f"m{i}.log").read_text(errors="replace")[-600:] for i in range(self.n))
            self.stop()
            unavailable(f"etcd did not become ready on 127.0.0.1:{self.client_ports}: {logs}")
        return self

    def wait_ready(self, timeout: float = 30.0, members: list[int] | None = None) -> bool:
        """Every chosen member answers a linearizable read (so a raft leader exists)."""
        deadline = time.monotonic() + timeout
        for i in range(self.n) if members is None else members:
            while True:
                proc = self.procs[i]
                if proc is None or proc.poll() is not None:
                    return False
                with contextlib.suppress(Exception):
                    status, _ = self.post(i, "kv/range", {"key": _b64("ready")}, timeout=1.0)
                    if status == 200:
                        break
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return True

    # --- raw access, bypassing the backend ---

    def post(self, i: int, path: str, body: Any, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, Any]:
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            import ssl

            context = ssl._create_unverified_context()
            if self.client_cert:
                context.load_cert_chain(*self.client_cert)
            conn = http.client.HTTPSConnection("127.0.0.1", self.client_ports[i], timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.client_ports[i], timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = token
            conn.request("POST", "/v3/" + path, json.dumps(body), headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def live(self) -> int:
        return next(i for i in range(self.n) if self.procs[i] is not None and self.procs[i].poll() is None)

    def put(self, key: str, value: bytes, token: str | None = None) -> None:
        status, reply = self.post(self.live(), "kv/put", {"key": _b64(key), "value": _b64(value)}, token=token)
        assert status == 200, reply

    def get(self, key: str, token: str | None = None) -> bytes | None:
        status, reply = self.post(self.live(), "kv/range", {"key": _b64(key)}, token=token)
        assert status == 200, reply
        kvs = reply.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def delete(self, key: str) -> None:
        status, reply = self.post(self.live(), "kv/deleterange", {"key": _b64(key)})
        assert status == 200, reply

    def leader_member(self) -> int:
        """Index of the member that is the raft leader now."""
        for i in range(self.n):
            proc = self.procs[i]
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(Exception):
                status, reply = self.post(i, "maintenance/status", {}, timeout=1.0)
                if status == 200 and reply.get("leader") == reply.get("header", {}).get("member_id"):
                    return i
        raise AssertionError("no etcd member is the raft leader")

    # --- faults (kill, pause, resume, stop: Members) ---

    def restart(self, i: int) -> None:
        self.kill(i)
        self.start_member(i)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """One member for the whole session (tests use their own key prefixes)."""
    workdir = Path(tempfile.mkdtemp(prefix="etcd-test-"))
    cluster = EtcdCluster(workdir, 1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """``etcd_factory(n=1, *extra)``: private members, stopped afterwards."""
    started: list[EtcdCluster] = []

    def make(n: int = 1, *extra: str, start: bool = True) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd{len(started)}", n, *extra)
        started.append(cluster)
        return cluster.start() if start else cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def prefix() -> str:
    return "/test-" + uuid.uuid4().hex[:10]


@pytest.fixture
def open_backend() -> Iterator[Callable[[str], EtcdBackend]]:
    """``open_backend(url)``: a backend closed at teardown."""
    yield from closed_afterwards(EtcdBackend.from_url)


from tests.elections import elections  # noqa: E402,F401 - the fixture, for the fault tests
