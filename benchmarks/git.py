"""git backend: renew latency per transport, and repository size after many renewals.

``python -m benchmarks git [--latency-n N] [--renewals N]``

* Renew latency: ``update`` with the version from the last write (the engine's fast
  path), and a cold ``get`` (a new client that has to fetch the commit), against a local
  bare repository, ``git daemon`` and ``git http-backend`` (behind the tests' bridge),
  all on 127.0.0.1.
* Repository size: N renewals through ``git daemon`` into a bare repository with default
  settings; ``git count-objects -v`` right after, after ``git gc`` (default two-week
  grace for unreachable objects) and after ``git gc --prune=now``. For comparison, the
  same number of renewals into a repository with ``gc.pruneExpire`` set short, where
  receive-pack's own auto-gc prunes the garbage. For comparison, the
  same number of lock commits chained by parent (what a commit-per-renewal design
  writes), after ``git gc --prune=now``.

Writes ``benchmarks/results/git.json`` and prints the Markdown for ``docs/bench-git.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dulwich.repo import Repo

from celery_leader.backends.git import DEFAULT_AUTHOR, GitBackend, _build
from celery_leader.record import LeaderRecord, encode_record

from ._common import free_port, summary, table, write_results

BRIDGE = Path(__file__).resolve().parents[1] / "tests" / "git" / "http_bridge.py"
TIMEOUT = 10.0
#: a short grace so that the server's own auto-gc (run by receive-pack) prunes within the run
PRUNE_EXPIRE = "30.seconds.ago"


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def _server(argv: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _init(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def _objects(repo: Path) -> dict[str, int]:
    """``git count-objects -v`` (sizes in KiB) plus the disk usage of objects/ in KiB."""
    out = dict(line.split(": ") for line in _git(repo, "count-objects", "-v").splitlines())
    du = subprocess.run(["du", "-sk", str(repo / "objects")], capture_output=True, text=True, check=True)
    return {
        "loose_objects": int(out["count"]),
        "loose_kib": int(out["size"]),
        "packed_objects": int(out["in-pack"]),
        "pack_kib": int(out["size-pack"]),
        "garbage_kib": int(out.get("size-garbage", 0)),
        "objects_dir_kib": int(du.stdout.split()[0]),
        "commits_reachable": int(_git(repo, "rev-list", "--count", "--all") or 0),
    }


def _record(n: int) -> LeaderRecord:
    now = time.time()
    return LeaderRecord(holder="bench-node-1", lease_duration=15.0, acquire_time=now, renew_time=now + n, transitions=1)


def latency(url: str, n: int) -> dict[str, Any]:
    backend = GitBackend.from_url(url)
    lock = backend.lock(f"bench-{os.getpid()}-{time.monotonic_ns()}")
    version = lock.create(_record(0), TIMEOUT)
    for i in range(10):  # warm up
        version = lock.update(_record(i), version, TIMEOUT)
    renew: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        version = lock.update(_record(i), version, TIMEOUT)
        renew.append((time.perf_counter() - t0) * 1000)
    cold: list[float] = []
    for _ in range(max(20, n // 5)):
        fresh = GitBackend.from_url(url).lock(lock.name)
        t0 = time.perf_counter()
        got = fresh.get(TIMEOUT)
        cold.append((time.perf_counter() - t0) * 1000)
        assert got is not None and got.version == version
    warm: list[float] = []
    for _ in range(max(20, n // 5)):
        t0 = time.perf_counter()
        lock.get(TIMEOUT)
        warm.append((time.perf_counter() - t0) * 1000)
    backend.close()
    return {"renew_ms": summary(renew), "get_cold_ms": summary(cold), "get_cached_ms": summary(warm)}


def renewals_size(url: str, repo: Path, n: int) -> dict[str, Any]:
    lock = GitBackend.from_url(url).lock("beat")
    version = lock.create(_record(0), TIMEOUT)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        version = lock.update(_record(i), version, TIMEOUT)
    elapsed = time.perf_counter() - t0
    after = _objects(repo)
    _git(repo, "gc", "--quiet")
    after_gc = _objects(repo)
    _git(repo, "gc", "--quiet", "--prune=now")
    after_prune = _objects(repo)
    return {"renewals": n, "seconds": elapsed, "after_renewals": after, "after_gc": after_gc, "after_gc_prune_now": after_prune}


def chained_size(repo: Path, n: int) -> dict[str, Any]:
    """The same lock contents, each commit with the previous one as parent (unbounded history)."""
    r = Repo(str(repo))
    parent: bytes | None = None
    everything = []
    for i in range(n):
        commit, objects = _build(encode_record(_record(i)), "beat.lock.json", DEFAULT_AUTHOR.encode(), b"renew %d\n" % i)
        if parent is not None:
            commit.parents = [parent]
            objects[-1] = commit
        everything += [(o, None) for o in objects]
        parent = commit.id
    r.object_store.add_objects(everything)  # one pack: gc repacks it anyway
    assert parent is not None
    r.refs[b"refs/heads/lock"] = parent
    r.close()
    _git(repo, "gc", "--quiet", "--prune=now")
    return {"renewals": n, "after_gc_prune_now": _objects(repo)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks git", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--renewals", type=int, default=10_000)
    args = parser.parse_args(argv)

    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    results: dict[str, Any] = {"latency": {}, "command": "python -m benchmarks git " + " ".join(argv)}
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp:
        root = Path(tmp)
        print(f"size: {args.renewals} chained commits ...", file=sys.stderr)
        results["chained"] = chained_size(_init(root / "chained.git"), args.renewals)
        repo = _init(root / "locks.git")
        dport, hport = free_port(), free_port()
        daemon = [os.path.join(exec_path, "git-daemon"), "--reuseaddr", f"--base-path={root}", "--export-all",
                  "--enable=receive-pack", "--listen=127.0.0.1", f"--port={dport}", str(root)]
        bridge = [sys.executable, str(BRIDGE), "--root", str(root), "--port", str(hport)]
        with _server(daemon, dport), _server(bridge, hport):
            urls = {
                "git+file (local bare repo)": f"git+file://{repo}",
                "git:// (git daemon)": f"git://127.0.0.1:{dport}/locks.git",
                "git+http:// (git http-backend)": f"git+http://127.0.0.1:{hport}/locks.git",
            }
            for label, url in urls.items():
                print(f"latency: {label} ...", file=sys.stderr)
                results["latency"][label] = latency(url, args.latency_n)
            print(f"size: {args.renewals} renewals through git daemon ...", file=sys.stderr)
            sized = _init(root / "sized.git")
            results["bounded"] = renewals_size(f"git://127.0.0.1:{dport}/sized.git", sized, args.renewals)
            print(f"size: {args.renewals} renewals, server with gc.pruneExpire={PRUNE_EXPIRE} ...", file=sys.stderr)
            pruned = _init(root / "pruned.git")
            _git(pruned, "config", "gc.pruneExpire", PRUNE_EXPIRE)
            results["bounded_prune_expire"] = renewals_size(f"git://127.0.0.1:{dport}/pruned.git", pruned, args.renewals)
            results["bounded_prune_expire"]["gc.pruneExpire"] = PRUNE_EXPIRE
    results["git_version"] = _git(Path("."), "--version")
    path = write_results("git", results)
    print(markdown(results))
    print(f"\nwritten: {path}", file=sys.stderr)
    return 0


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for label, r in results["latency"].items():
        rows.append([label, r["renew_ms"]["p50"], r["renew_ms"]["p99"], r["get_cold_ms"]["p50"], r["get_cached_ms"]["p50"]])
    lat = table(rows, ["transport", "renew p50 ms", "renew p99 ms", "cold get p50 ms", "cached get p50 ms"])
    b, c, p = results["bounded"], results["chained"], results["bounded_prune_expire"]
    size_rows = []
    for label, o in (
        (f"parentless, right after {b['renewals']} renewals (default server config)", b["after_renewals"]),
        ("parentless, after `git gc` (2-week grace)", b["after_gc"]),
        ("parentless, after `git gc --prune=now`", b["after_gc_prune_now"]),
        (f"parentless, right after {p['renewals']} renewals, server gc.pruneExpire={p['gc.pruneExpire']}",
         p["after_renewals"]),
        (f"chained by parent, {c['renewals']} commits, after `git gc --prune=now`", c["after_gc_prune_now"]),
    ):
        size_rows.append([label, o["commits_reachable"], o["loose_objects"], o["packed_objects"],
                          o["loose_kib"] + o["pack_kib"], o["objects_dir_kib"]])
    size = table(size_rows, ["repository state", "reachable commits", "loose objects", "packed objects",
                             "object KiB (count-objects)", "objects/ on disk KiB"])
    return f"{lat}\n\n{size}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
