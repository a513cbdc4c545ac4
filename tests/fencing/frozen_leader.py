"""A leader that gets frozen: ``python -m tests.fencing.frozen_leader NAME REDIS_URL TRIGGER SPECS_JSON``.

It joins election NAME (Redis backend, lease 1 s), and in its term writes ``first`` with
its token to every store in SPECS_JSON, prints ``{"wrote": token}``, then waits for the
TRIGGER file and writes ``late`` to every store with the same token, as a process that
was frozen mid-work and resumed would, without looking at its lease again. It prints one
``{"store": kind, "outcome": "written" | "refused" | error}`` line per store, then exits.
Times are ``time.monotonic()`` (one clock for every process of the host): a line
``{"deadline": d, "t": now}`` every 50 ms while it leads, ``{"lost": t}`` when its election
notices the term ended (for the benchmark's timeline, ``python -m benchmarks fencing``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from celery_leader import Election
from celery_leader.errors import StaleTokenError
from tests.fencing.stores import open_store

_SAY = threading.Lock()


def say(**doc: object) -> None:
    """One whole line per document: the heartbeat thread and the work thread both speak, and
    ``print`` writes the text and its newline separately (two documents could share a line)."""
    with _SAY:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


def main(name: str, url: str, trigger: str, specs_json: str) -> None:
    stores = [open_store(spec) for spec in json.loads(specs_json)]

    def heartbeat(leadership) -> None:
        while not leadership.lost.wait(0.05):
            say(deadline=leadership.deadline, t=time.monotonic())

    def work(leadership) -> None:
        token = leadership.token
        threading.Thread(target=heartbeat, args=(leadership,), daemon=True).start()
        say(started=time.monotonic(), token=token)
        for store in stores:
            store.write(token, "first")
        say(wrote=token, t=time.monotonic())
        while not os.path.exists(trigger):  # SIGSTOP lands here
            time.sleep(0.01)
        say(resumed=time.monotonic())
        for store in stores:
            try:
                store.write(token, "late")
                outcome = "written"
            except StaleTokenError as exc:
                outcome = f"refused {exc.token} < {exc.seen}"
            except Exception as exc:  # noqa: BLE001 - reported to the test
                outcome = f"error {type(exc).__name__}: {exc}"
            say(store=store.kind, outcome=outcome, t=time.monotonic())
        time.sleep(0.3)  # long enough for the election to notice, for the timeline
        say(done=True)
        os._exit(0)

    election = Election(name, url=url, lease_duration=1.0, renew_deadline=0.6, retry_period=0.2,
                        on_started_leading=work, on_stopped_leading=lambda: say(lost=time.monotonic()))
    election.start()
    time.sleep(120)
    os._exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:5])
