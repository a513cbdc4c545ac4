"""A real leader process frozen past its lease cannot write after the next leader did.

The leader (tests/fencing/frozen_leader.py) writes to every store with its token, then is
stopped with SIGSTOP. The lease runs out, a new leader is elected here (a higher token)
and writes to every store. The old leader is resumed (SIGCONT) and goes on with the
write it was about to make, with its old token: every store refuses it and keeps the new
leader's value. The election alone could not prevent that write (the process was not
running to see its deadline); the token does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

from celery_leader import Election
from tests.fencing.conftest import REDIS_URL, _need
from tests.fencing.stores import KINDS, open_store


def _lines(proc: subprocess.Popen, into: list, event: threading.Event) -> None:
    for line in proc.stdout:
        try:
            into.append(json.loads(line))
        except ValueError:  # kept, so a failure shows it, instead of ending the reader
            into.append({"unparsed": line})
        event.set()


def _wait_for(lines: list, event: threading.Event, key: str, timeout: float = 60.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for doc in lines:
            if key in doc:
                return doc
        event.wait(0.2)
        event.clear()
    raise AssertionError(f"no {key!r} line from the leader within {timeout} s: {lines}")


def test_frozen_leader_is_refused_by_every_store(make_spec, tmp_path):
    _need("redis")
    specs = [make_spec(kind) for kind in KINDS]
    name = "fence-frozen-" + uuid.uuid4().hex[:8]
    trigger = tmp_path / "resume"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fencing.frozen_leader", name, REDIS_URL, str(trigger), json.dumps(specs)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    lines: list[dict] = []
    event = threading.Event()
    reader = threading.Thread(target=_lines, args=(proc, lines, event), daemon=True)
    reader.start()
    stores = [open_store(spec) for spec in specs]
    election = Election(name, url=REDIS_URL, lease_duration=1.0, renew_deadline=0.6, retry_period=0.2)
    try:
        old = _wait_for(lines, event, "wrote")["wrote"]
        assert all(store.read() == "first" for store in stores)
        os.kill(proc.pid, signal.SIGSTOP)
        election.start()
        assert election.wait_until_leader(30), "no new leader while the old one was frozen"
        new = election.token
        assert new > old
        for store in stores:
            store.write(new, "new leader")
        trigger.touch()
        os.kill(proc.pid, signal.SIGCONT)
        _wait_for(lines, event, "done")
        outcomes = {doc["store"]: doc["outcome"] for doc in lines if "store" in doc}
        assert outcomes == {kind: f"refused {old} < {new}" for kind in KINDS}
        assert {store.kind: store.read() for store in stores} == {kind: "new leader" for kind in KINDS}
    finally:
        election.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        for store in stores:
            store.close()
