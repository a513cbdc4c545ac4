"""The chaos harness's child with a real fenced store: ``celery_leader.testing.child``'s
log lines, plus each beat written to Redis through :func:`celery_leader.fencing.redis.fenced_set`.

``python -m benchmarks._fenced_child LOGFILE INTERVAL REDIS_URL KEY``. A write refused by
the fence (a newer term has written: this one was frozen and woke up) is logged as a
``refused`` line and the child stops writing; the harness counts those lines. The writes run in a thread
(a slow Redis must not delay the beats). A Redis
error is logged as ``fence-error`` and the beat goes on (the fence is an observer here).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time


def main(argv: list[str]) -> int:
    path, interval, url, key = argv[0], float(argv[1]), argv[2], argv[3]
    import redis

    from celery_leader.errors import StaleTokenError
    from celery_leader.fencing.redis import fenced_set

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    token = int(os.environ.get("CELERY_LEADER_TOKEN", "-1"))
    base = {"node": os.environ.get("CELERY_LEADER_IDENTITY", ""), "token": token, "pid": os.getpid()}

    def log(event: str, **extra: object) -> None:
        os.write(fd, (json.dumps({"e": event, "t": time.time(), **base, **extra}) + "\n").encode())

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    def writer() -> None:
        # in a thread: a slow Redis must not delay the beats the checker reads
        while not stopping:
            try:
                fenced_set(client, key, token, f"{base['node']}:{time.time()}")
            except StaleTokenError as exc:
                log("refused", seen=exc.seen)
                return  # what a well-behaved worker does: stop this term's work
            except Exception as exc:  # noqa: BLE001 - Redis away: not the fence's verdict
                log("fence-error", error=type(exc).__name__)
            time.sleep(interval)

    log("start")
    threading.Thread(target=writer, daemon=True).start()
    while not stopping:
        log("beat")
        time.sleep(interval)
    log("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
