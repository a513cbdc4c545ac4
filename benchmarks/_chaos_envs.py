"""The chaos harness's environments: one small class per backend (or backend on a server).

An environment starts and stops its servers, gives each candidate its URL (usually through
a :class:`~benchmarks.tcpproxy.TcpProxy` of its own, so that one candidate can be cut off
while the others still reach the backend), and injects the fault kinds its users meet,
each with the bound the design promises on the time without a leader.

Environments are independent of each other, so that several runs can go at once
(tests/chaos runs six at a time, beside the long runs): every server, proxy and serf
agent listens on a free port of its own; PostgreSQL and MariaDB runs create a database of
their own, S3 runs a key prefix, the fence a Redis key with a random suffix; a gossip
partition is an iptables chain of its own (random name) whose rules match both an
agent's uid and the *other* agent's port, so two gossip runs at once (even two whose
agents got the same uids) never drop each other's packets.

Servers are started with the tests' own code (tests/servers.py, tests/*/conftest.py), so a
change to how a server starts here changes it in both places.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.tcpproxy import TcpProxy
from celery_leader.testing.cluster import ElectorCluster

#: startup of a new child process, scheduling noise: added to every bound
SLACK = 1.5


@dataclass(frozen=True)
class Timing:
    lease: float = 1.0
    renew: float = 0.6
    retry: float = 0.2

    @property
    def poll(self) -> float:
        return self.retry * 1.2

    @property
    def takeover(self) -> float:
        """The design's promise after the leader vanished: the lease runs out, a follower's
        next poll acquires, its child starts."""
        return self.lease + self.poll + SLACK


@dataclass
class Injected:
    """What :meth:`Environment.inject` did: the outage length and the promised bound."""

    detail: float = 0.0
    bound: float | None = None


class Environment:
    """Base: no server, no extra fault. Subclasses set ``name``, ``faults`` and ``urls``."""

    name: ClassVar[str] = ""
    #: extra fault kind -> what it does (kill/term/pause are common to all)
    faults: ClassVar[dict[str, str]] = {}
    timing: ClassVar[Timing] = Timing()

    def __init__(self, workdir: Path, n: int) -> None:
        self.workdir = workdir
        self.n = n
        self.proxies: list[TcpProxy] = []

    def start(self) -> None:
        """Start the servers (called once before the candidates start)."""

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.close()

    def urls(self) -> list[str]:
        raise NotImplementedError

    def cluster(self, name: str, **kw: Any) -> ElectorCluster:
        return ElectorCluster(self.urls(), name, self.n, **kw)

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        """Inject one extra fault, recover from it, and return its bound."""
        t = self.timing
        if kind == "blackhole":  # the leader's own connections fall silent, the others' not
            detail = t.lease * rng.uniform(1.5, 3.0)
            self.proxies[leader].set_mode("blackhole")
            time.sleep(detail)
            self.proxies[leader].set_mode("reset")
            self.proxies[leader].set_mode("pass")
            return Injected(detail, t.takeover)
        if kind == "delay":  # every chunk of the leader's connections held a while
            detail = t.retry * rng.uniform(0.1, 0.5)
            self.proxies[leader].set_mode("delay", detail)
            time.sleep(t.lease * 2)
            self.proxies[leader].set_mode("pass")
            return Injected(detail, None)
        raise ValueError(f"{self.name}: no fault {kind!r}")


PROXY_FAULTS = {
    "blackhole": "the leader's connections silently dropped (its own proxy holds every byte) for 1.5-3 leases",
    "delay": "the leader's connections delayed by 10-50 % of the retry period (no promise)",
}


class FileEnv(Environment):
    name = "file"

    def urls(self) -> list[str]:
        d = self.workdir / "locks"
        d.mkdir(parents=True, exist_ok=True)
        return ["file://" + str(d)] * self.n


class RedisEnv(Environment):
    name = "redis"
    faults = {"server": "redis-server (AOF, fsync always) killed, restarted after 0.2-2 leases", **PROXY_FAULTS}

    def start(self) -> None:
        from tests.servers import free_port

        self.port = free_port()
        self.dir = self.workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._start_server()
        self.proxies = [TcpProxy(self.port) for _ in range(self.n)]

    def _start_server(self) -> None:
        from tests.servers import running

        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]  # fmt: skip
        self._ctx = running(argv, self.port, timeout=10)
        self.proc = self._ctx.__enter__()

    def _kill_server(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: no shutdown save; AOF with fsync always keeps every write
            self.proc.wait(10)
            self._ctx.__exit__(None, None, None)
            self.proc = None

    def stop(self) -> None:
        super().stop()
        self._kill_server()

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p.port}/0" for p in self.proxies]

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "server":
            detail = rng.uniform(0.2, 2.0) * self.timing.lease
            self._kill_server()
            time.sleep(detail)
            self._start_server()
            return Injected(detail, detail + self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


class PostgresEnv(Environment):
    name = "postgresql"
    faults = {"sessions": "every session of the candidates' database ended by pg_terminate_backend", **PROXY_FAULTS}

    def start(self) -> None:
        import psycopg

        self.db = f"celery_leader_chaos_{uuid.uuid4().hex[:8]}"
        self._admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
        self._admin.execute(f'CREATE DATABASE "{self.db}"')
        self.proxies = [TcpProxy(5432) for _ in range(self.n)]

    def terminate_sessions(self) -> int:
        row = self._admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [self.db]
        ).fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        super().stop()
        self._admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self._admin.close()

    def urls(self) -> list[str]:
        return [f"postgresql://postgres@127.0.0.1:{p.port}/{self.db}" for p in self.proxies]

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "sessions":
            # the pools retry once on a fresh connection: leadership should survive
            self.terminate_sessions()
            time.sleep(self.timing.lease)
            return Injected(0.0, self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


class EnsembleEnv(Environment):
    """Three etcd members or three ZooKeeper servers; candidate i reaches member i % 3 only."""

    #: extra seconds a consensus election may add when the killed member ordered the writes
    election: ClassVar[float] = 1.0

    def _ensemble(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        self.cluster_ = self._ensemble()
        self.proxies = [TcpProxy(self.cluster_.client_ports[i % 3]) for i in range(self.n)]

    def stop(self) -> None:
        super().stop()
        self.cluster_.stop()

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "member":
            member = rng.randrange(3)
            detail = rng.uniform(0.5, 3.0) * self.timing.lease
            self.cluster_.kill(member)
            time.sleep(detail)
            self.cluster_.start_member(member)
            return Injected(detail, self.timing.takeover + self.election)
        return super().inject(kind, leader, rng, cluster)


class EtcdEnv(EnsembleEnv):
    name = "etcd"
    faults = {"member": "one of three members killed (any, the raft leader too), restarted after 0.5-3 leases",
              **PROXY_FAULTS}  # fmt: skip
    election = 1.0

    def _ensemble(self) -> Any:
        from tests.etcd.conftest import EtcdCluster

        return EtcdCluster(self.workdir / "etcd", 3).start()

    def urls(self) -> list[str]:
        return [f"etcd://127.0.0.1:{p.port}/chaos" for p in self.proxies]


class ZooKeeperEnv(EnsembleEnv):
    name = "zookeeper"
    faults = {"member": "one of three servers killed, restarted after 0.5-3 leases", **PROXY_FAULTS}
    election = 4.0

    def _ensemble(self) -> Any:
        from tests.zookeeper.conftest import ZooKeeper

        return ZooKeeper(self.workdir / "zookeeper", 3).start()

    def urls(self) -> list[str]:
        return [f"zookeeper://127.0.0.1:{p.port}/chaos?session_timeout=2" for p in self.proxies]


class KubernetesEnv(Environment):
    """The in-test Lease API server (threads of this process), one proxy per candidate."""

    name = "kubernetes"
    faults = {
        "server": "the API server stopped (every connection broken), restarted after 0.2-2 leases without its watch cache",
        "watches": "every open watch stream cut mid-way",
        **PROXY_FAULTS,
    }

    def start(self) -> None:
        from tests.kubernetes.apiserver import LeaseAPIServer

        self.api = LeaseAPIServer(namespaces=("default", "chaos")).start()
        self.proxies = [TcpProxy(self.api.port) for _ in range(self.n)]
        self.configs = []
        for i, proxy in enumerate(self.proxies):
            path = self.api.write_kubeconfig(self.workdir / f"kubeconfig-{i}", namespace="chaos")
            doc = json.loads(path.read_text())
            doc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{proxy.port}"
            path.write_text(json.dumps(doc))
            self.configs.append(path)

    def stop(self) -> None:
        super().stop()
        self.api.stop()

    def urls(self) -> list[str]:
        return [f"kubernetes://chaos?kubeconfig={path}" for path in self.configs]

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "server":
            detail = rng.uniform(0.2, 2.0) * self.timing.lease
            self.api.stop()
            self.api.forget_watch_cache()
            time.sleep(detail)
            self.api.start()
            return Injected(detail, detail + self.timing.takeover)
        if kind == "watches":
            self.api.cut_watches()
            time.sleep(self.timing.lease)
            return Injected(0.0, self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


S3_FAULTS = {
    "server": "the S3 server stopped, restarted on the same port after 0.2-2 leases",
    "lost": "the leader's next PUT forwarded and landed, its answer lost (connection closed)",
    **PROXY_FAULTS,
}


class _S3Env(Environment):
    """Candidate i: TcpProxy (blackhole, delay) -> FaultyProxy (lost answers) -> the server."""

    faults = S3_FAULTS
    #: the servers' answers take 5-50 ms at rest, but moto and the proxies run in the
    #: harness's own process: at a load average of 30 its threads answered past the 0.3 s
    #: that a 1 s lease gives each call, for minutes on end (no leader for 120 s). A 3 s
    #: lease (1 s per call) is closer to what S3 users run (15 s by default) anyway.
    timing = Timing(3.0, 2.0, 0.5)
    #: seconds the server needs to come back (added to the ``server`` bound)
    restart_cost: ClassVar[float] = 0.5

    def _server(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        from tests.s3.conftest import FaultyProxy

        self.s3 = self._server()
        self.http = [FaultyProxy(self.s3.endpoint, keep_host=True) for _ in range(self.n)]
        for h in self.http:  # an upstream refusing while the server restarts is the fault, not news
            h.server.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.proxies = [TcpProxy(h.port) for h in self.http]
        self.prefix = "chaos-" + uuid.uuid4().hex[:8]

    def stop(self) -> None:
        super().stop()
        for h in self.http:
            h.close()

    def urls(self) -> list[str]:
        q = "?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"
        creds = f"{self.s3.access_key}:{self.s3.secret_key}@"
        return [f"s3://{creds}{self.s3.bucket}/{self.prefix}/" + q.format(port=p.port) for p in self.proxies]

    def _restart(self, down: float) -> None:
        raise NotImplementedError

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "server":
            detail = rng.uniform(0.2, 2.0) * self.timing.lease
            self._restart(detail)
            return Injected(detail, detail + self.restart_cost + self.timing.takeover)
        if kind == "lost":
            self.http[leader].lose_put_answers = 1
            time.sleep(self.timing.lease * 1.5)
            self.http[leader].lose_put_answers = 0
            return Injected(0.0, self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


class MotoEnv(_S3Env):
    name = "s3-moto"

    def _server(self) -> Any:
        import logging

        from moto.server import ThreadedMotoServer

        from tests.s3.conftest import S3Server, _ready
        from tests.servers import free_port

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.moto.start()
        s3 = S3Server("moto", f"http://127.0.0.1:{self.port}", "testing", "testing")
        if not _ready(s3, 15):
            raise RuntimeError("moto server did not answer")
        return s3

    def _restart(self, down: float) -> None:
        from moto.server import ThreadedMotoServer

        from tests.servers import wait_for_port

        self.moto.stop()  # moto's data lives in this process: it survives, as a real S3's would
        time.sleep(down)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.moto.start()
        wait_for_port(self.port, 10)

    def stop(self) -> None:
        super().stop()
        self.moto.stop()


class SeaweedEnv(_S3Env):
    name = "s3-seaweedfs"
    restart_cost = 15.0  # weed mini starts master, volume, filer and S3 again

    def _server(self) -> Any:
        from tests.s3.conftest import Weed

        self.weed = Weed(self.workdir / "seaweed")
        return self.weed.start()

    def _restart(self, down: float) -> None:
        self.weed.stop()
        time.sleep(down)
        self.weed.start()

    def stop(self) -> None:
        super().stop()
        self.weed.stop()


class _GitEnv(Environment):
    transport: ClassVar[str] = "file"

    def start(self) -> None:
        from tests.git.conftest import init_bare

        self.root = self.workdir / "git-root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.repo = init_bare(self.root / "chaos.git")


class GitFileEnv(_GitEnv):
    name = "git-file"
    faults = {"reflock": "a `git update-ref --stdin` transaction prepared on the lock's ref (holding "
                         "refs/celery-leader/chaos.lock) and frozen by SIGSTOP for 0.5-2 leases, then aborted"}  # fmt: skip

    def urls(self) -> list[str]:
        return [f"git+file://{self.repo}"] * self.n

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "reflock":
            detail = rng.uniform(0.5, 2.0) * self.timing.lease
            writer = self._hold_ref_lock()
            if writer is None:
                return Injected(0.0, None)  # the ref moved under every attempt: nothing held
            writer.send_signal(signal.SIGSTOP)
            time.sleep(detail)
            writer.send_signal(signal.SIGCONT)
            assert writer.stdin is not None
            writer.stdin.write("abort\n")
            writer.stdin.close()
            writer.wait(10)
            # a held ref lock stops every write, renewals too: the leader may lose its term
            return Injected(detail, detail + self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)

    def _hold_ref_lock(self, attempts: int = 50) -> subprocess.Popen | None:
        """A ``git update-ref --stdin`` transaction that verifies the ref's current value and
        prepares: git then holds ``refs/celery-leader/chaos.lock`` until commit or abort."""
        ref = "refs/celery-leader/chaos"
        for _ in range(attempts):
            oid = subprocess.run(["git", "-C", str(self.repo), "rev-parse", "-q", "--verify", ref],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
            writer = subprocess.Popen(["git", "-C", str(self.repo), "update-ref", "--stdin"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            assert writer.stdin is not None and writer.stdout is not None
            # verify with no value means "must not exist": a missing ref is locked as missing
            writer.stdin.write(f"start\nverify {ref} {oid}\nprepare\n".replace(" \n", "\n"))
            writer.stdin.flush()
            writer.stdout.readline()  # start: ok
            if writer.stdout.readline().startswith("prepare: ok"):
                return writer
            writer.kill()  # a renewal moved the ref (or held its lock) meanwhile: again
            writer.wait(10)
        return None


class _GitServerEnv(_GitEnv):
    #: every call is a process spawned by the server (git-upload-pack / git-receive-pack, and
    #: for HTTP a CGI bridge too): 15-25 ms at rest, but past the 0.3 s that a 1 s lease
    #: gives each call at a load average of 30 (measured: then most calls time out, and a
    #: 0.2 s freeze of the server left no leader for 88 s). A 3 s lease gives calls 1 s.
    timing = Timing(3.0, 2.0, 0.5)
    faults = {
        "server": "the git server killed, restarted on the same port after 0.2-2 leases",
        "slow": "the git server frozen (SIGSTOP) for 0.2-0.5 leases, then resumed",
        **PROXY_FAULTS,
    }

    def start(self) -> None:
        from tests.servers import free_port

        super().start()
        self.port = free_port()
        self._ctx: Any = None
        self._start_server()
        self.proxies = [TcpProxy(self.port) for _ in range(self.n)]

    def _server_ctx(self) -> Any:
        raise NotImplementedError

    def _start_server(self) -> None:
        self._ctx = self._server_ctx()
        self.proc, _ = self._ctx.__enter__()

    def _stop_server(self, kill: bool = True) -> None:
        if kill:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._ctx.__exit__(None, None, None)

    def stop(self) -> None:
        super().stop()
        self._stop_server(kill=False)

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "server":
            detail = rng.uniform(0.2, 2.0) * self.timing.lease
            self._stop_server()
            time.sleep(detail)
            self._start_server()
            return Injected(detail, detail + self.timing.takeover)
        if kind == "slow":
            detail = rng.uniform(0.2, 0.5) * self.timing.lease
            self.proc.send_signal(signal.SIGSTOP)
            time.sleep(detail)
            self.proc.send_signal(signal.SIGCONT)
            return Injected(detail, detail + self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


class GitDaemonEnv(_GitServerEnv):
    name = "git-daemon"

    def _server_ctx(self) -> Any:
        from tests.git.conftest import daemon

        return daemon(self.root, self.port)

    def urls(self) -> list[str]:
        return [f"git://127.0.0.1:{p.port}/chaos.git" for p in self.proxies]


class GitHttpEnv(_GitServerEnv):
    name = "git-http"

    def _server_ctx(self) -> Any:
        from tests.git.conftest import http_bridge

        return http_bridge(self.root, self.port)

    def urls(self) -> list[str]:
        return [f"git+http://127.0.0.1:{p.port}/chaos.git" for p in self.proxies]


class _GossipEnv(Environment):
    """n serf agents (each under its own uid), one candidate per agent (tests/gossip)."""

    faults = {
        "agent": "the leader's serf agent SIGKILLed (its candidate too), both restarted after the takeover",
        "partition": "the leader (with n//2 - 1 others) cut off from the majority by iptables for 1.5 leases + takeover",
        "minority": "a minority of followers cut off from the rest (the leader keeps its majority)",
    }
    #: tests/gossip/test_gossip_faults.py: a gossip round needs several serf intervals
    timing = Timing(3.0, 2.0, 0.5)
    #: the measured takeover after an acquire race can reach 3.6 leases (docs/bench-gossip.md)
    race: ClassVar[float] = 3 * 3.0

    def start(self) -> None:
        from tests.gossip.cluster import SerfCluster

        self.serf = SerfCluster(self.n, self.workdir / "serf")

    def stop(self) -> None:
        self.serf.close()

    def urls(self) -> list[str]:
        return ["gossip://unused"] * self.n

    def cluster(self, name: str, **kw: Any) -> ElectorCluster:
        from tests.gossip.cluster import GossipElectors

        workdir = kw.pop("workdir")
        return GossipElectors(self.serf, name, workdir, **kw)

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        t = self.timing
        bound = t.takeover + self.race
        if kind == "agent":
            self.serf.agents[leader].kill()
            cluster.kill(leader)
            cluster.wait_for_leader(timeout=60, exclude={leader})
            self.serf.restart(leader)
            cluster.restart(leader)
            self.serf.wait_alive(range(self.n), timeout=30)
            return Injected(0.0, bound)
        if kind in ("partition", "minority"):
            others = [x for x in range(self.n) if x != leader]
            rng.shuffle(others)
            small_n = (self.n - 1) // 2
            small = [leader, *others[: small_n - 1]] if kind == "partition" else others[:small_n]
            large = [x for x in range(self.n) if x not in small]
            self.serf.partition([small, large])
            try:
                if kind == "partition":
                    cluster.wait_for_leader(timeout=60, exclude=set(small))
                detail = t.lease * 1.5
                time.sleep(detail)
            finally:
                self.serf.heal()
            self.serf.wait_alive(range(self.n), timeout=30)
            return Injected(detail, bound)
        return super().inject(kind, leader, rng, cluster)


class Gossip3Env(_GossipEnv):
    name = "gossip-3"


class Gossip5Env(_GossipEnv):
    name = "gossip-5"


class _DjangoEnv(Environment):
    """``celery-leader run --url django://cI``: alias cI reaches the server through proxy I.

    The settings module (written to the work directory) extends tests/django/settings.py
    with one alias per candidate; the database is created for the run and dropped after.
    """

    vendor: ClassVar[str] = ""
    server_port: ClassVar[int] = 0
    faults = {"sessions": "every connection of the candidates killed by the server", **PROXY_FAULTS}

    def start(self) -> None:
        self.db = f"django_leader_chaos_{uuid.uuid4().hex[:8]}"
        self._admin_open()
        self.proxies = [TcpProxy(self.server_port) for _ in range(self.n)]
        (self.workdir / "chaos_django_settings.py").write_text(
            "import os\nfrom tests.django.settings import *  # noqa\n"
            f"_base = dict(DATABASES[{'pg' if self.vendor == 'postgresql' else 'maria'!r}], NAME={self.db!r})\n"
            "for _i, _port in enumerate(os.environ['CHAOS_PORTS'].split(',')):\n"
            "    DATABASES[f'c{_i}'] = dict(_base, PORT=_port)\n"
            f"LEADER_ELECTION = dict(LEADER_ELECTION, LEASE_DURATION={self.timing.lease}, "
            f"RENEW_DEADLINE={self.timing.renew}, RETRY_PERIOD={self.timing.retry})\n"
        )
        self.env = {
            "DJANGO_SETTINGS_MODULE": "chaos_django_settings",
            "CHAOS_PORTS": ",".join(str(p.port) for p in self.proxies),
            "PYTHONPATH": os.pathsep.join([str(self.workdir), str(Path(__file__).resolve().parents[1]),
                                           os.environ.get("PYTHONPATH", "")]),  # fmt: skip
        }
        subprocess.run([sys.executable, "-m", "django", "migrate", "django_leader", "--database", "c0", "-v", "0"],
                       env={**os.environ, **self.env}, check=True, capture_output=True)  # fmt: skip

    def cluster(self, name: str, **kw: Any) -> ElectorCluster:
        return ElectorCluster(self.urls(), name, self.n, env=self.env, **kw)

    def urls(self) -> list[str]:
        return [f"django://c{i}" for i in range(self.n)]

    def _admin_open(self) -> None:
        raise NotImplementedError

    def terminate_sessions(self) -> None:
        raise NotImplementedError

    def inject(self, kind: str, leader: int, rng: random.Random, cluster: ElectorCluster) -> Injected:
        if kind == "sessions":
            self.terminate_sessions()
            time.sleep(self.timing.lease)
            return Injected(0.0, self.timing.takeover)
        return super().inject(kind, leader, rng, cluster)


class DjangoPostgresEnv(_DjangoEnv):
    name = "django-postgresql"
    vendor = "postgresql"
    server_port = 5432

    def _admin_open(self) -> None:
        import psycopg

        self._admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
        self._admin.execute(f'CREATE DATABASE "{self.db}"')

    def terminate_sessions(self) -> None:
        self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [self.db])

    def stop(self) -> None:
        super().stop()
        self._admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self._admin.close()


class DjangoMariaEnv(_DjangoEnv):
    name = "django-mariadb"
    vendor = "mysql"
    server_port = 3306

    def _admin_open(self) -> None:
        import pymysql

        self._admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
        with self._admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.db}`")

    def terminate_sessions(self) -> None:
        with self._admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", [self.db])
            for (pid,) in cur.fetchall():
                try:
                    cur.execute(f"KILL {int(pid)}")
                except pymysql_error():
                    pass  # gone already

    def stop(self) -> None:
        super().stop()
        with self._admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.db}`")
        self._admin.close()


class RunAsLeaderCluster(ElectorCluster):
    """``python -m django runasleader --identity nodeI work LOG --node nodeI``: the command
    logs its term like the harness's child (tests/django/testapp/management/commands/work.py)."""

    def command(self, i: int) -> list[str]:
        return ["env", f"DJANGO_LEADER_TEST_URL=django://c{i}", sys.executable, "-m", "django", "runasleader",
                "--name", self.name, "--identity", self.identity(i), "work", str(self.log_path(i)),
                "--node", self.identity(i)]  # fmt: skip

    def wait_for_leader(self, timeout: float = 20.0, exclude: Any = ()) -> int:
        """As the base class, starting again every candidate (not excluded: the harness
        restarts those) that exited meanwhile (a term that ended, or a first backend call
        that failed: runasleader then exits 1)."""
        exclude = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in enumerate(self.procs):
                if i not in exclude and proc is not None and proc.poll() is not None:
                    self.spawn(i)
            try:
                return super().wait_for_leader(min(2.0, max(0.1, deadline - time.monotonic())), exclude)
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise


class RunAsLeaderEnv(DjangoPostgresEnv):
    """The ``runasleader`` integration (django_leader) on PostgreSQL through per-candidate proxies.

    A candidate whose term ends exits (code 3): the harness starts it again before each
    fault. The timing is the test settings' (lease 1 s, renew deadline 0.6 s, retry 0.2 s).
    """

    name = "runasleader"
    #: runasleader checks the backend once before it stands, within one call's timeout
    #: (renew deadline / 2): a fresh Django connection through the proxy took more than
    #: the 0.3 s of the 1 s lease at a load average of 15-20 here, and the command exits 1
    #: ("lock backend failed"). A 3 s lease gives each call 1 s.
    timing = Timing(3.0, 2.0, 0.5)

    def cluster(self, name: str, **kw: Any) -> ElectorCluster:
        return RunAsLeaderCluster(self.urls(), name, self.n, env=self.env, **kw)


def pymysql_error() -> type[Exception]:
    import pymysql

    return pymysql.Error


ENVIRONMENTS: dict[str, type[Environment]] = {
    env.name: env
    for env in (FileEnv, RedisEnv, PostgresEnv, EtcdEnv, ZooKeeperEnv, KubernetesEnv, MotoEnv, SeaweedEnv,
                GitFileEnv, GitDaemonEnv, GitHttpEnv, Gossip3Env, Gossip5Env, DjangoPostgresEnv, DjangoMariaEnv,
                RunAsLeaderEnv)
}  # fmt: skip
#: gossip-N runs N candidates
CANDIDATES = {"gossip-3": 3, "gossip-5": 5}
