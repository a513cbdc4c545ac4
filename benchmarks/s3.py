"""S3 backend: renew latency against a raw conditional ``put_object`` on the same server, and
takeover after SIGKILL / SIGTERM of the leading ``celery-leader run`` process, relative to
the lease; on moto's server and on SeaweedFS.

``python -m benchmarks s3 [--samples N] [--kills N] [--servers moto,seaweedfs]``

Both servers run privately on free 127.0.0.1 ports (moto in this process, SeaweedFS as a
child). Writes ``benchmarks/results/s3.json`` and prints the Markdown for ``docs/bench-s3.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import boto3
from botocore.config import Config

from benchmarks._common import summary, table, to_ms, write_results
from celery_leader.backends.s3 import S3Backend, _no_expect_continue
from celery_leader.record import LeaderRecord, encode_record
from celery_leader.testing.cluster import ElectorCluster

NAME = "s3"
LEASE, RENEW, RETRY = 1.0, 0.6, 0.2
OP_TIMEOUT = 5.0


@contextlib.contextmanager
def server(kind: str) -> Iterator[Any]:
    from tests.s3.conftest import S3Server, Weed, _ready

    if kind == "moto":
        from moto.server import ThreadedMotoServer

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            host, port = moto.get_host_and_port()
            s3 = S3Server("moto", f"http://{host}:{port}", "testing", "testing")
            if not _ready(s3, 15):
                raise RuntimeError("moto did not start")
            yield s3
        finally:
            moto.stop()
        return
    weed = Weed(Path(tempfile.mkdtemp(prefix="bench-seaweed-")))
    try:
        yield weed.start()
    finally:
        weed.stop()


def renew_latency(s3: Any, samples: int) -> dict[str, Any]:
    """Library renewals (``Lock.update`` with the last version) vs raw ``put_object(IfMatch=...)``."""
    prefix = "bench-" + uuid.uuid4().hex[:8]
    raw = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip
    lean = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip
    lean.meta.events.register_last("before-call.s3", _no_expect_continue)
    raw_key = f"{prefix}/raw.lock.json"
    record = LeaderRecord(holder="bench", lease_duration=LEASE, transitions=1)
    etag = raw.put_object(Bucket=s3.bucket, Key=raw_key, Body=encode_record(record, n=0), IfNoneMatch="*")["ETag"]
    backend = S3Backend.from_url(s3.url(prefix))
    lock = backend.lock("lib")
    version = lock.create(record, OP_TIMEOUT)
    lean_etag = lean.put_object(Bucket=s3.bucket, Key=raw_key + "2", Body=encode_record(record, n=0))["ETag"]
    for _ in range(20):  # warm the three connection pools
        etag = raw.put_object(Bucket=s3.bucket, Key=raw_key, Body=encode_record(record, n=uuid.uuid4().hex),
                              IfMatch=etag)["ETag"]
        lean_etag = lean.put_object(Bucket=s3.bucket, Key=raw_key + "2",
                                    Body=encode_record(record, n=uuid.uuid4().hex), IfMatch=lean_etag)["ETag"]
        version = lock.update(record, version, OP_TIMEOUT)
    raw_t: list[float] = []
    lean_t: list[float] = []
    lib_t: list[float] = []
    get_t: list[float] = []
    state = {"raw": etag, "lean": lean_etag, "lib": version}

    def one(kind: str) -> None:
        if kind == "lib":
            t0 = time.perf_counter()
            state["lib"] = lock.update(record, state["lib"], OP_TIMEOUT)
            lib_t.append(time.perf_counter() - t0)
            return
        client, key, out = (raw, raw_key, raw_t) if kind == "raw" else (lean, raw_key + "2", lean_t)
        body = encode_record(record, n=uuid.uuid4().hex)
        t0 = time.perf_counter()
        state[kind] = client.put_object(Bucket=s3.bucket, Key=key, Body=body, IfMatch=state[kind])["ETag"]
        out.append(time.perf_counter() - t0)

    # interleaved, in a rotating order, so that drift and "who goes first" cost all alike
    kinds = ["raw", "lean", "lib"]
    for n in range(samples):
        for kind in kinds[n % 3 :] + kinds[: n % 3]:
            one(kind)
        if n % 5 == 0:
            t0 = time.perf_counter()
            lock.get(OP_TIMEOUT)
            get_t.append(time.perf_counter() - t0)
    backend.close()
    raw_s, lean_s, lib_s = summary(to_ms(raw_t)), summary(to_ms(lean_t)), summary(to_ms(lib_t))
    return {
        "raw_put_if_match_ms": raw_s,
        "raw_put_if_match_no_expect_ms": lean_s,
        "ratio_p50_vs_no_expect": lib_s["p50"] / lean_s["p50"],
        "renew_ms": lib_s,
        "get_ms": summary(to_ms(get_t)),
        "ratio_p50": lib_s["p50"] / raw_s["p50"],
        "ratio_mean": lib_s["mean"] / raw_s["mean"],
    }


def takeovers(s3: Any, kills: int, workdir: Path) -> dict[str, Any]:
    """SIGKILL then SIGTERM the leading ``run`` process; time from its last beat to the next start."""
    prefix = "bench-" + uuid.uuid4().hex[:8]
    crash: list[float] = []
    graceful: list[float] = []
    with ElectorCluster(s3.url(prefix), "beat", n=3, workdir=workdir, lease_duration=LEASE,
                        renew_deadline=RENEW, retry_period=RETRY) as c:  # fmt: skip
        for kind, out in (("kill", crash), ("term", graceful)):
            for _ in range(kills):
                i = c.wait_for_leader(timeout=30)
                time.sleep(0.3)
                (c.kill if kind == "kill" else c.terminate)(i)
                j = c.wait_for_leader(timeout=30, exclude={i})
                ivs = c.intervals()
                old = max((iv for iv in ivs if iv.node == f"node{i}"), key=lambda iv: iv.start)
                new = max((iv for iv in ivs if iv.node == f"node{j}"), key=lambda iv: iv.start)
                out.append(new.start - old.end)
                c.wait_exit(i)
                c.restart(i)
        report = c.check()
    report.assert_safe()
    return {
        "crash_takeover_s": summary(crash),
        "crash_takeover_over_lease": summary([g / LEASE for g in crash]),
        "graceful_handover_s": summary(graceful),
        "terms": len(report.intervals),
        "overlaps": len(report.overlaps),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks s3", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300, help="renewals timed per server (default 300)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs and SIGTERMs per server (default 5)")
    parser.add_argument("--servers", default="moto,seaweedfs")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    results: dict[str, Any] = {"lease": [LEASE, RENEW, RETRY], "servers": {}}
    for kind in args.servers.split(","):
        with server(kind) as s3:
            print(f"{kind}: renew latency ...", flush=True)
            data = renew_latency(s3, args.samples)
            print(f"{kind}: takeovers ...", flush=True)
            data.update(takeovers(s3, args.kills, Path(tempfile.mkdtemp(prefix=f"bench-s3-{kind}-"))))
            results["servers"][kind] = data
    path = write_results(NAME, results)
    rows = []
    for kind, d in results["servers"].items():
        for label, key in (("raw put_object If-Match, boto3 defaults (ms)", "raw_put_if_match_ms"),
                           ("raw put_object If-Match, no Expect: 100-continue (ms)", "raw_put_if_match_no_expect_ms"),
                           ("renew: Lock.update (ms)", "renew_ms"),
                           ("get (ms)", "get_ms"), ("crash takeover / lease", "crash_takeover_over_lease"),
                           ("graceful handover, CLI child to child (s)", "graceful_handover_s")):
            s = d[key]
            rows.append((kind, label, s["n"], s["p50"], s["p99"], s["max"]))
        rows.append((kind, "renew / raw boto3 defaults (p50 ratio)", "", d["ratio_p50"], "", ""))
        rows.append((kind, "renew / raw without Expect (p50 ratio)", "", d["ratio_p50_vs_no_expect"], "", ""))
    print(table(rows, ["server", "measure", "n", "p50", "p99", "max"]))
    print(f"\nwrote {path}; mean renew/raw ratios: "
          + ", ".join(f"{k} {statistics.fmean([v['ratio_mean']]):.2f}" for k, v in results["servers"].items()))
    return 0
