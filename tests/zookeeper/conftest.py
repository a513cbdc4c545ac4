"""Fixtures for the ZooKeeper backend tests: ZooKeeper from Debian's ``zookeeper`` package
(a JVM) on free 127.0.0.1 ports, standalone or as a three-server ensemble.

A JVM takes a second or more to start on this machine, so one standalone server is shared
by the whole session; tests use their own paths under it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.elections import elections  # noqa: F401 - the fixture, for the fault tests
from tests.servers import Members, closed_afterwards, free_port, unavailable

#: where Debian's package (and upstream's tarball, as a fallback) put the jars
JAR_DIRS = ("/usr/share/java", "/usr/share/zookeeper/lib", "/usr/share/zookeeper")


def classpath() -> str | None:
    """zookeeper.jar (its manifest names the other jars) plus a logging binding."""
    for directory in JAR_DIRS:
        jar = Path(directory) / "zookeeper.jar"
        if jar.exists():
            binding = next(
                (str(Path(d) / n) for d in JAR_DIRS for n in ("slf4j-simple.jar", "slf4j-nop.jar") if (Path(d) / n).exists()),
                None,
            )
            return ":".join(p for p in (str(jar), binding) if p)
        jars = sorted(Path(directory).glob("zookeeper-3*.jar"))
        if jars:
            return ":".join(str(p) for p in Path(directory).glob("*.jar"))
    return None


def four_letter(port: int, word: bytes = b"srvr", timeout: float = 1.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(word)
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeper(Members):
    """``n`` ZooKeeper servers on 127.0.0.1: one is standalone, three an ensemble.

    tickTime 200 ms: sessions of 0.4-4 s are allowed, and an ensemble elects a new leader
    within a second or two. No admin server, no JMX port, 4lw ``srvr`` only.
    """

    def __init__(self, workdir: Path, n: int = 1) -> None:
        java = shutil.which("java")
        cp = classpath()
        if java is None or cp is None:
            unavailable("ZooKeeper needs java and Debian's zookeeper package: apt-get install zookeeper")
        self.java, self.cp = java, cp
        self.workdir = workdir
        self.n = n
        self.client_ports = [free_port() for _ in range(n)]
        self.quorum_ports = [(free_port(), free_port()) for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n

    def url(self, path: str = "/test", members: list[int] | None = None, userinfo: str = "", query: str = "") -> str:
        chosen = range(self.n) if members is None else members
        hosts = ",".join(f"127.0.0.1:{self.client_ports[i]}" for i in chosen)
        at = f"{userinfo}@" if userinfo else ""
        return f"zookeeper://{at}{hosts}{path}" + (f"?{query}" if query else "")

    def _config(self, i: int) -> Path:
        d = self.workdir / f"zk{i}"
        (d / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            "tickTime=200", "initLimit=25", "syncLimit=10", f"dataDir={d / 'data'}",
            f"clientPort={self.client_ports[i]}", "clientPortAddress=127.0.0.1",
            "admin.enableServer=false", "4lw.commands.whitelist=srvr,ruok", "maxClientCnxns=200",
            "autopurge.purgeInterval=0",
        ]  # fmt: skip
        if self.n > 1:
            (d / "data" / "myid").write_text(f"{i + 1}\n")
            lines += [f"server.{j + 1}=127.0.0.1:{q}:{e}" for j, (q, e) in enumerate(self.quorum_ports)]
            lines += ["quorumListenOnAllIPs=false"]
        cfg = d / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start_member(self, i: int) -> None:
        main = "org.apache.zookeeper.server.ZooKeeperServerMain" if self.n == 1 else "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        cfg = self._config(i)
        env = dict(os.environ, JMXDISABLE="true")
        argv = [
            self.java, "-Xms32m", "-Xmx192m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true", "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dzookeeper.jmx.log4j.disable=true",
            "-cp", self.cp, main, str(cfg),
        ]  # fmt: skip
        log = open(self.workdir / f"zk{i}.log", "ab")
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        log.close()

    def mode(self, i: int) -> str | None:
        with contextlib.suppress(OSError):
            for line in four_letter(self.client_ports[i]).splitlines():
                if line.startswith("Mode:"):
                    return line.split(":", 1)[1].strip()
        return None

    def wait_ready(self, timeout: float = 60.0, members: list[int] | None = None) -> bool:
        """``srvr`` reports a Mode (ruok answers before the server serves)."""
        deadline = time.monotonic() + timeout
        for i in range(self.n) if members is None else members:
            while self.mode(i) not in ("standalone", "leader", "follower"):
                proc = self.procs[i]
                if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
        return True

    def start(self, timeout: float = 60.0) -> "ZooKeeper":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            self.start_member(i)
        if not self.wait_ready(timeout):
            logs = " | ".join((self.workdir / f"zk{i}.log").read_text(errors="replace")[-800:] for i in range(self.n))
            self.stop()
            unavailable(f"ZooKeeper did not start on 127.0.0.1:{self.client_ports}: {logs}")
        return self

    def leader(self) -> int:
        for i in range(self.n):
            if self.mode(i) in ("leader", "standalone"):
                return i
        raise AssertionError("no ZooKeeper server leads")

    def admin(self, i: int | None = None, auth: tuple[str, str] | None = None):
        """A kazoo client for the test itself (raw writes), started; stop it after use."""
        from kazoo.client import KazooClient

        i = next(j for j in range(self.n) if self.procs[j] is not None and self.procs[j].poll() is None) if i is None else i
        client = KazooClient(
            hosts=f"127.0.0.1:{self.client_ports[i]}",
            timeout=4.0,
            auth_data=[("digest", f"{auth[0]}:{auth[1]}")] if auth else None,
        )
        client.start(20)
        return client


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeper]:
    """One standalone server for the whole session."""
    workdir = Path(tempfile.mkdtemp(prefix="zk-test-"))
    server = ZooKeeper(workdir, 1).start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def zk_admin(zk_server: ZooKeeper):
    client = zk_server.admin()
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_factory(tmp_path: Path) -> Iterator[Callable[..., ZooKeeper]]:
    started: list[ZooKeeper] = []

    def make(n: int = 1) -> ZooKeeper:
        server = ZooKeeper(tmp_path / f"zookeeper{len(started)}", n)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def path() -> str:
    return "/test-" + uuid.uuid4().hex[:10]


@pytest.fixture
def open_backend():
    """``open_backend(url)``: a backend closed at teardown."""
    from celery_leader.backends.zookeeper import ZooKeeperBackend

    yield from closed_afterwards(ZooKeeperBackend.from_url)
