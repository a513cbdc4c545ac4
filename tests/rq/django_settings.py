"""A Django project for the django-rq test: django_rq + django_leader, one queue per run."""

import os

TAG = os.environ.get("CLT_RQ_TAG", "untagged")
SECRET_KEY = "celery-leader-rq-tests"
INSTALLED_APPS = ["django_rq", "django_leader"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
RQ_QUEUES = {TAG: {"URL": "redis://127.0.0.1:6379/0"}}
# django_leader's settings: URL, identity and timing are shared; NAME becomes a prefix
LEADER_ELECTION = {
    "URL": "redis://127.0.0.1:6379/0",
    "NAME": TAG,
    "LEASE_DURATION": 1.0,
    "RENEW_DEADLINE": 0.6,
    "RETRY_PERIOD": 0.2,
}
# RQ-only keys
RQ = {"LEADER_ELECTION": {"CATCH_UP": "skip"}, "WORKER_CLASS": "celery_leader.integrations.rq.LeaderWorker"}
