"""The Celery app the process tests run (``celery -A tests.celery.app beat|worker``).

Everything comes from the environment, so that each test can point beats and workers at
its own queue, lock, schedule store and record file:

``CLT_BROKER`` broker URL; ``CLT_QUEUE`` the queue beat sends to; ``CLT_RECORD`` the file
the task appends one JSON line to per run; ``CLT_LOCK_URL`` / ``CLT_NAME`` / ``CLT_IDENTITY``
the election; ``CLT_BASE`` the wrapped scheduler; ``CLT_INTERVAL`` the task's period;
``CLT_CATCH_UP`` the catch-up policy; ``CLT_DJANGO_DB`` a PostgreSQL database name for
django-celery-beat; ``CLT_REDBEAT_PREFIX`` RedBeat's key prefix (``CLT_REDBEAT_LOCK_TIMEOUT`` its own lock, for
RedBeat alone); ``CLT_MAX_INTERVAL`` beat's max loop interval; ``CLT_LEADER_QUEUES``
singleton queues for the worker.
"""

from __future__ import annotations

import json
import os
import socket
import time

from celery import Celery

from celery_leader.beat import sent_token

env = os.environ.get

if env("CLT_DJANGO_DB"):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery.django_settings")
    import django

    django.setup()

app = Celery("clt")
queue = env("CLT_QUEUE", "clt")
interval = float(env("CLT_INTERVAL", "1.0"))
app.conf.update(
    broker_url=env("CLT_BROKER", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    task_default_queue=queue,
    task_create_missing_queues=True,
    result_backend=None,
    result_expires=None,
    timezone="UTC",
    beat_max_loop_interval=float(env("CLT_MAX_INTERVAL", "0.2")),
    beat_schedule={
        "record": {"task": "tests.celery.app.record", "schedule": interval, "args": ("beat",)},
    },
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    leader_election_url=env("CLT_LOCK_URL"),
    leader_election_name=env("CLT_NAME", "clt.beat"),
    leader_election_identity=env("CLT_IDENTITY") or None,
    leader_election_lease_duration=float(env("CLT_LEASE", "1.0")),
    leader_election_renew_deadline=float(env("CLT_RENEW", "0.6")),
    leader_election_retry_period=float(env("CLT_RETRY", "0.2")),
    leader_election_scheduler=env("CLT_BASE", "celery.beat:PersistentScheduler"),
    leader_election_catch_up=env("CLT_CATCH_UP") or None,
    leader_election_worker_queues=env("CLT_LEADER_QUEUES") or None,
)
if env("CLT_REDBEAT_PREFIX"):
    app.conf.redbeat_redis_url = env("CLT_BROKER")
    app.conf.redbeat_key_prefix = env("CLT_REDBEAT_PREFIX")
    if env("CLT_REDBEAT_LOCK_TIMEOUT"):
        app.conf.redbeat_lock_timeout = int(env("CLT_REDBEAT_LOCK_TIMEOUT"))

if env("CLT_WORKER_STEP"):
    from celery_leader.worker import install

    install(app)


def _append(line: dict) -> None:
    path = env("CLT_RECORD")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@app.task(bind=True)
def record(self, kind: str, seq: int | None = None, sleep: float = 0.0) -> None:
    """One line per run: who sent it (beat's fencing token) and who ran it."""
    get = getattr(self.request, "get", None)
    headers = getattr(self.request, "headers", None) or {}

    def header(key: str):
        value = get(key) if get else None
        return value if value is not None else headers.get(key)

    start = time.time()
    if sleep:
        time.sleep(sleep)
    _append(
        {
            "kind": kind,
            "seq": seq,
            "token": sent_token(self.request),
            "identity": header("celery_leader_identity"),
            "sent": header("celery_leader_sent_at"),
            "start": start,
            "end": time.time(),
            "worker": env("CLT_WORKER_NAME") or socket.gethostname(),
            "pid": os.getpid(),
        }
    )
