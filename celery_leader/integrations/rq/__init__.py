"""Highly available RQ scheduling: run every scheduler on every host, only the leader enqueues.

* :class:`LeaderCronScheduler` — RQ's cron scheduler (``rq cron``);
  command ``celery-leader-rq cron CONFIG`` (or ``python -m celery_leader.integrations.rq cron``).
* :class:`LeaderWorker` — ``rq worker -w celery_leader.integrations.rq.LeaderWorker --with-scheduler``.
* :class:`LeaderScheduler` — rq-scheduler; command ``celery-leader-rq scheduler``.
* django-rq: see :mod:`celery_leader.integrations.rq.django` and docs/rq.md.

Every job a leader enqueues carries its term's fencing token: :func:`sent_token`.
Classes are imported on first use, so rq-scheduler is only needed for :class:`LeaderScheduler`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import META_TOKEN, LeaderConfig, leader_config, sent_token

__all__ = [
    "LeaderConfig",
    "LeaderCronScheduler",
    "LeaderRQScheduler",
    "LeaderScheduler",
    "LeaderSimpleWorker",
    "LeaderSpawnWorker",
    "LeaderWorker",
    "META_TOKEN",
    "leader_config",
    "sent_token",
]

_LAZY = {
    "LeaderCronScheduler": "cron",
    "LeaderRQScheduler": "worker",
    "LeaderWorker": "worker",
    "LeaderSimpleWorker": "worker",
    "LeaderSpawnWorker": "worker",
    "LeaderSchedulerMixin": "worker",
    "LeaderScheduler": "rqscheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
