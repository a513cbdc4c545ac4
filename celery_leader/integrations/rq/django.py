"""django-rq: the elected RQ schedulers, configured from Django settings.

* ``manage.py rqworker --with-scheduler`` with
  ``RQ = {"WORKER_CLASS": "celery_leader.integrations.rq.LeaderWorker"}``;
* ``manage.py rqscheduler`` with
  ``RQ = {"SCHEDULER_CLASS": "celery_leader.integrations.rq.django.DjangoLeaderScheduler"}``;
* ``manage.py rqcron_leader CONFIG`` (django_leader's command; django-rq's ``rqcron`` has
  no class setting) runs :class:`DjangoLeaderCronScheduler`.

Election settings come from ``settings.RQ["LEADER_ELECTION"]``, then django_leader's
``settings.LEADER_ELECTION`` (see :mod:`celery_leader.integrations.rq.config`).
"""

from __future__ import annotations

from django_rq.cron import DjangoCronScheduler

from .cron import LeaderCronScheduler

__all__ = ["DjangoLeaderCronScheduler", "DjangoLeaderScheduler"]


class DjangoLeaderCronScheduler(LeaderCronScheduler, DjangoCronScheduler):
    """django-rq's cron scheduler (queues from ``RQ_QUEUES``), elected."""


try:  # rq-scheduler is optional
    from django_rq.queues import DjangoScheduler

    from .rqscheduler import LeaderScheduler
except ImportError:  # pragma: no cover - without rq-scheduler only the cron scheduler is here
    pass
else:

    class DjangoLeaderScheduler(LeaderScheduler, DjangoScheduler):
        """django-rq's rq-scheduler (timeouts and TTLs from ``RQ_QUEUES``), elected."""
