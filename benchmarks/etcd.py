"""etcd backend: renewal against the raw transaction, graceful handover through the watch,
crash takeover over the lease; on one member and on a three-member cluster.

``python -m benchmarks etcd [--samples N] [--handovers N] [--crashes N] [--members 1,3]``
``python -m benchmarks etcd --only batch [--batch-n 1000] [--batch-rounds 5]``

The members are private ``etcd`` processes (Debian's ``etcd-server``) on free 127.0.0.1
ports. Writes ``benchmarks/results/etcd.json`` and prints the Markdown for
``docs/bench-etcd.md``.

Batched renewals (issue 21), on one member: N elections renewed one by one
(``EtcdLock.update``) and in batches (``EtcdBackend.update_many``: nested transactions,
at most ``TXN_RENEWALS`` per ``kv/txn``); client CPU, the member's CPU (/proc) and HTTP
round trips per renewal. Its section of docs/bench-etcd.md is written by this module;
``--only batch`` runs just this part and adds it to the existing results.
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

from benchmarks import _batch
from benchmarks._common import RESULTS, machine, write_results
from benchmarks._coord import measure, report
from celery_leader.backends.etcd import TXN_RENEWALS, EtcdBackend
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


def batch_renewals(cluster: Any, n: int, rounds: int) -> dict[str, Any]:
    """One by one against ``update_many`` on the first member (see benchmarks/_batch.py)."""
    backend = EtcdBackend.from_url(cluster.url("/bench-batch", members=[0]))
    trips = [0]
    roundtrip = backend._roundtrip

    def counting(*args: Any, **kwargs: Any) -> Any:
        trips[0] += 1  # one HTTP request and its answer
        return roundtrip(*args, **kwargs)

    backend._roundtrip = counting  # type: ignore[method-assign]
    pid = cluster.procs[0].pid
    try:
        found = _batch.measure(backend, n, rounds, lambda: trips[0], lambda: _batch.process_cpu([pid]))
    finally:
        backend.close()
    return {**found, "txn_renewals": TXN_RENEWALS, "when": machine()["when"]}


BATCH_TITLE = "## Batched renewals (issue 21)"


def batch_markdown(b: dict[str, Any]) -> str:
    one, bat = b["one_by_one"], b["batched"]
    per_call = -(-b["batch_size"] // b["txn_renewals"])
    return "\n".join([
        BATCH_TITLE,
        "",
        f"{b['n']:,} elections on one `EtcdBackend` (one member), renewed {b['rounds']} rounds one by one "
        f"(`EtcdLock.update`, one `kv/txn` each) and {b['rounds']} rounds in batches (`update_many`, {b['batch_size']} "
        f"renewals per call as the asyncio scheduler sends them: {per_call} `kv/txn` of at most {b['txn_renewals']} "
        "nested transactions each, sent one after the other), alternating (CPU and round trips: means over the rounds; "
        f"time per round: the median), at a load average of {b.get('loadavg_before', b['loadavg'])[0]:.1f} before and {b['loadavg'][0]:.1f} after ({b.get('when', '')}). Server CPU is "
        "the etcd process's own (/proc); round trips are HTTP requests.",
        "",
        _batch.markdown_table(b),
        "",
        f"Batched, a renewal costs **{b['client_cpu_ratio']:.2f}x** the client CPU and **{b['server_cpu_ratio']:.2f}x** "
        f"the member's CPU of one by one, and {bat['round_trips']:.3f} round trips (raft entries) instead of "
        f"{one['round_trips']:.2f}; a round of {b['n']:,} renewals takes {bat['wall_ms']:.0f} ms instead of "
        f"{one['wall_ms']:.0f} ms. Each nested transaction still compares its own lock's two keys; new terms and "
        "writes over garbage go one by one as before.",
    ]) + "\n"  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks etcd", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--handovers", type=int, default=10)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--members", default="1,3")
    parser.add_argument("--batch-n", type=int, default=1000, help="elections of the batched-renewal part")
    parser.add_argument("--batch-rounds", type=int, default=5, help="rounds each way of the batched-renewal part")
    parser.add_argument("--only", choices=["all", "batch"], default="all", help="batch: only the batched-renewal part")
    args = parser.parse_args(argv)
    from tests.etcd.conftest import EtcdCluster

    results: dict[str, Any] = {"clusters": {}}
    if args.only == "batch":
        path = RESULTS / f"{NAME}.json"
        results = json.loads(path.read_text()) if path.exists() else results
    print("batched renewals ...", flush=True)
    cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix="bench-etcd-batch-")), 1).start()
    try:
        results["batch"] = {**batch_renewals(cluster, args.batch_n, args.batch_rounds),
                            "command": ("python -m benchmarks etcd " + " ".join(argv)).strip()}  # fmt: skip
    finally:
        cluster.stop()
    text = batch_markdown(results["batch"])
    print(text)
    _batch.splice(Path(__file__).resolve().parent.parent / "docs" / "bench-etcd.md", BATCH_TITLE, text)
    if args.only == "batch":
        path.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {path}")
        return 0
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
