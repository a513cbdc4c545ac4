"""etcd backend: renewal against the raw transaction, graceful handover through the watch,
crash takeover over the lease; on one member and on a three-member cluster.

``python -m benchmarks etcd [--samples N] [--handovers N] [--crashes N] [--members 1,3]``

The members are private ``etcd`` processes (Debian's ``etcd-server``) on free 127.0.0.1
ports. Writes ``benchmarks/results/etcd.json`` and prints the Markdown for
``docs/bench-etcd.md``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write_results
from benchmarks._coord import measure, report
from celery_leader.record import LeaderRecord, encode_record

NAME = "etcd"


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class RawTxn:
    """The backend's write transaction sent by hand on one kept-alive connection."""

    def __init__(self, port: int, prefix: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.lock, self.fence = f"{prefix}/lock/raw", f"{prefix}/fence/raw"
        self.mod = 0
        self.record = LeaderRecord(holder="raw", lease_duration=1.0, acquire_time=time.time(), renew_time=time.time(), transitions=1)

    def __call__(self) -> None:
        body = {
            "compare": [
                {"key": _b64(self.lock), "target": "MOD", "mod_revision": str(self.mod), "result": "EQUAL"},
                {"key": _b64(self.fence), "target": "MOD", "mod_revision": str(self.mod), "result": "EQUAL"},
            ],
            "success": [
                {"request_put": {"key": _b64(self.lock), "value": _b64(encode_record(self.record))}},
                {"request_put": {"key": _b64(self.fence), "value": _b64("1")}},
            ],
        }
        self.conn.request("POST", "/v3/kv/txn", json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(self.conn.getresponse().read())
        if not reply.get("succeeded"):
            raise RuntimeError(f"raw txn lost: {reply}")
        self.mod = int(reply["header"]["revision"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks etcd", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--handovers", type=int, default=10)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--members", default="1,3")
    args = parser.parse_args(argv)
    from tests.etcd.conftest import EtcdCluster

    results: dict[str, Any] = {"clusters": {}}
    for n in (int(x) for x in args.members.split(",")):
        cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix=f"bench-etcd{n}-")), n).start()
        try:
            url = cluster.url("/bench")
            label = f"{n} member" + ("s" if n > 1 else "")
            results["clusters"][label] = measure(label, url, RawTxn(cluster.client_ports[0], "/bench-raw"), args)
        finally:
            cluster.stop()
    path = write_results(NAME, results)
    print(report(results["clusters"], "etcd", "raw txn, by hand (ms)"))
    print(f"\nwrote {path}")
    return 0
