"""ZooKeeper backend: renewal against the raw kazoo multi-operation, graceful handover
through a data watch, crash takeover over the lease; standalone and a three-server ensemble.

``python -m benchmarks zookeeper [--samples N] [--handovers N] [--crashes N] [--servers 1,3]``

The servers are private JVMs from Debian's ``zookeeper`` package on free 127.0.0.1 ports.
Writes ``benchmarks/results/zookeeper.json`` and prints the Markdown for
``docs/bench-zookeeper.md``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from benchmarks._common import write_results
from benchmarks._coord import measure, report
from celery_leader.record import LeaderRecord, encode_record

NAME = "zookeeper"


class RawMulti:
    """The backend's write (setData of the lock node and of the fence node, each at the
    version read, in one multi) sent by hand through its own kazoo client."""

    def __init__(self, hosts: str, path: str) -> None:
        self.client = KazooClient(hosts=hosts, timeout=10.0)
        self.client.start(30)
        self.lock, self.fence = f"{path}/lock/raw", f"{path}/fence/raw"
        record = LeaderRecord(holder="raw", lease_duration=1.0, acquire_time=time.time(), renew_time=time.time(), transitions=1)
        self.data = encode_record(record)
        self.client.create(self.lock, self.data, makepath=True)
        self.client.create(self.fence, b"1", makepath=True)
        self.versions = (0, 0)

    def __call__(self) -> None:
        t = self.client.transaction()
        t.set_data(self.lock, self.data, version=self.versions[0])
        t.set_data(self.fence, b"1", version=self.versions[1])
        results = t.commit_async().get(timeout=5.0)
        if any(isinstance(r, Exception) for r in results):
            raise RuntimeError(f"raw multi lost: {results}")
        self.versions = (results[0].version, results[1].version)

    def close(self) -> None:
        self.client.stop()
        self.client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks zookeeper", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--handovers", type=int, default=10)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--servers", default="1,3")
    args = parser.parse_args(argv)
    from tests.zookeeper.conftest import ZooKeeper

    results: dict[str, Any] = {"ensembles": {}}
    for n in (int(x) for x in args.servers.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-zk{n}-"))
        zk = ZooKeeper(workdir, n).start()
        raw = None
        try:
            url = zk.url("/bench")
            label = "standalone" if n == 1 else f"{n} servers"
            raw = RawMulti(f"127.0.0.1:{zk.client_ports[0]}", "/bench-raw")
            results["ensembles"][label] = measure(label, url, raw, args, renew_url=zk.url("/bench", members=[0]))
        finally:
            if raw is not None:
                raw.close()
            zk.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    path = write_results(NAME, results)
    print(report(results["ensembles"], "zookeeper", "raw multi, kazoo by hand (ms)"))
    print(f"\nwrote {path}")
    return 0
