"""A stand-in for scheduled work, run by ``celery-leader run`` in process tests and the demo.

``python -m celery_leader.testing.child LOGFILE [INTERVAL]`` appends JSON lines to LOGFILE:
``start`` (with the fencing token from the environment), a ``beat`` every INTERVAL seconds
while it runs, and ``stop`` when it is asked to stop (SIGTERM/SIGINT). A SIGKILL leaves no
``stop`` line: the last ``beat`` then marks the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    path = argv[0]
    interval = float(argv[1]) if len(argv) > 1 else 0.02
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    base = {
        "node": os.environ.get("CELERY_LEADER_IDENTITY", ""),
        "token": int(os.environ.get("CELERY_LEADER_TOKEN", "-1")),
        "pid": os.getpid(),
    }

    def log(event: str) -> None:
        os.write(fd, (json.dumps({"e": event, "t": time.time(), **base}) + "\n").encode())

    stopping = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("start")
    while not stopping:
        log("beat")
        time.sleep(interval)
    log("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
