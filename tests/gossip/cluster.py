"""Real serf agents on 127.0.0.1 for the gossip tests, and a packet-filter partition.

Each agent runs under its own uid (when we are root), so that an iptables ``owner`` match
can drop exactly the memberlist packets one agent sends to another: a real partition
between processes that all live on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

from celery_leader.serf import SerfClient, SerfError
from celery_leader.testing.cluster import ElectorCluster
from tests.servers import free_port, freeze, need_binary, stop_process, unavailable, wait_for_port

_UIDS = itertools.count(41000 + (os.getpid() % 500) * 20)


class Agent:
    def __init__(self, name: str, workdir: Path, uid: int | None) -> None:
        self.name = name
        self.bind = free_port()
        self.rpc = free_port()
        self.uid = uid
        self.log = workdir / f"serf-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            need_binary("serf", "apt-get install serf"), "agent", f"-node={self.name}",
            f"-bind=127.0.0.1:{self.bind}", f"-advertise=127.0.0.1:{self.bind}",
            f"-rpc-addr=127.0.0.1:{self.rpc}", "-profile=local", "-log-level=warn",
        ]
        extra = {"user": self.uid, "group": self.uid} if self.uid is not None else {}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         **extra)
        if not wait_for_port(self.rpc, 15.0):
            unavailable(f"serf agent {self.name} did not open its RPC port; see {self.log}")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.bind}"

    def url(self, members: Iterable[str], state_dir: Path | str, **options: object) -> str:
        opts = "".join(f"&{k}={v}" for k, v in options.items())
        return f"gossip://127.0.0.1:{self.rpc}?members={','.join(members)}&state_dir={state_dir}{opts}"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGSTOP:
                freeze(self.proc.pid)  # returns once the agent is really stopped
            else:
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class SerfCluster:
    """``n`` joined agents named ``n0..n{n-1}``; always :meth:`close` (stops agents, removes rules)."""

    def __init__(self, n: int, workdir: Path, *, prefix: str = "n") -> None:
        need_binary("serf", "apt-get install serf")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        root = os.geteuid() == 0
        self.agents = [Agent(f"{prefix}{i}", workdir, next(_UIDS) if root else None) for i in range(n)]
        self.chain: str | None = None
        try:
            for agent in self.agents:
                agent.start()
            self.join_all()
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def client(self, i: int) -> SerfClient:
        return SerfClient("127.0.0.1", self.agents[i].rpc, timeout=5.0)

    def join_all(self, timeout: float = 10.0) -> None:
        with self.client(0) as c:
            c.join([a.addr for a in self.agents[1:]])
        self.wait_alive(range(len(self.agents)), timeout)

    def wait_alive(self, indexes: Iterable[int], timeout: float = 10.0) -> None:
        want = {self.agents[i].name for i in indexes}
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client(0) as c:
                    alive = {m.name for m in c.members() if m.status == "alive"}
                if want <= alive:
                    return
            except SerfError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serf members {sorted(want)} not all alive within {timeout} s")
            time.sleep(0.05)

    def restart(self, i: int) -> None:
        agent = self.agents[i]
        agent.stop()
        agent.start()
        with self.client(i) as c:
            c.join([a.addr for j, a in enumerate(self.agents) if j != i])

    # --- partitions: iptables owner match on the agents' uids ---

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Drop every memberlist packet between agents of different groups (both directions)."""
        if os.geteuid() != 0 or shutil.which("iptables") is None:
            unavailable("a partition needs root and iptables (apt-get install iptables)")
        self.heal()
        chain = "CLG" + uuid.uuid4().hex[:10]
        rules: list[list[str]] = []
        for ga, gb in itertools.permutations(groups, 2):
            for a in ga:
                for b in gb:
                    for proto in ("udp", "tcp"):
                        rules.append(["-A", chain, "-o", "lo", "-p", proto, "-m", "owner", "--uid-owner",
                                      str(self.agents[a].uid), "--dport", str(self.agents[b].bind), "-j", "DROP"])
        try:
            _iptables("-N", chain)
            self.chain = chain
            for rule in rules:
                _iptables(*rule)
            _iptables("-I", "OUTPUT", "-j", chain)
        except subprocess.CalledProcessError as exc:
            self.heal()
            unavailable(f"iptables cannot filter here: {exc.stderr.strip() if exc.stderr else exc}")

    def heal(self) -> None:
        if self.chain is None:
            return
        chain, self.chain = self.chain, None
        with contextlib.suppress(subprocess.CalledProcessError):
            _iptables("-D", "OUTPUT", "-j", chain)
        with contextlib.suppress(subprocess.CalledProcessError):
            _iptables("-F", chain)
        with contextlib.suppress(subprocess.CalledProcessError):
            _iptables("-X", chain)

    def close(self) -> None:
        self.heal()
        for agent in self.agents:
            agent.stop()

    def __enter__(self) -> "SerfCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", "5", *args], check=True, capture_output=True, text=True)


class GossipElectors(ElectorCluster):
    """``celery-leader run`` per agent: each talks to its own agent and keeps its own acceptor state."""

    def __init__(self, serf: SerfCluster, name: str, workdir: Path, **kw: object) -> None:
        self.serf = serf
        super().__init__("gossip://unused", name, n=len(serf.agents), workdir=workdir, **kw)  # type: ignore[arg-type]

    def command(self, i: int) -> list[str]:
        argv = super().command(i)
        agent = self.serf.agents[i]
        argv[argv.index("--url") + 1] = agent.url(self.serf.names, self.workdir / f"state-{agent.name}")
        return argv
