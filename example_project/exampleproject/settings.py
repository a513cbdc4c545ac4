"""Settings of the example project.

SQLite by default (``EXAMPLE_SQLITE`` or ``db.sqlite3`` here); PostgreSQL when
``DATABASE_URL=postgres://user[:password]@host[:port]/name`` is set. Each process of the
story gets its identity from ``EXAMPLE_INSTANCE`` so that the database shows who ran what.
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_beat",
    "django_leader",
    "demoapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "exampleproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _database() -> dict:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        path = os.environ.get("EXAMPLE_SQLITE") or str(BASE_DIR / "db.sqlite3")
        # many processes write to one file in the story: wait for each other
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": {"timeout": 20}}
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise RuntimeError(f"DATABASE_URL must be postgres://..., got {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
    }


DATABASES = {"default": _database()}

# who this process is (the story sets it per process; otherwise <hostname>-<pid>-<random>)
INSTANCE = os.environ.get("EXAMPLE_INSTANCE") or None
LEASE = float(os.environ.get("EXAMPLE_LEASE", "15"))
RENEW = float(os.environ.get("EXAMPLE_RENEW", "10"))
RETRY = float(os.environ.get("EXAMPLE_RETRY", "2"))

# leases in this database: nothing new to run
LEADER_ELECTION = {
    "URL": "django://default",
    "NAME": "example",
    "IDENTITY": INSTANCE,
    "LEASE_DURATION": LEASE,
    "RENEW_DEADLINE": RENEW,
    "RETRY_PERIOD": RETRY,
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("EXAMPLE_QUEUE", "example")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# celery beat -S leader: the schedule lives in django-celery-beat's tables
CELERY_LEADER_ELECTION_URL = "django://default"
CELERY_LEADER_ELECTION_NAME = "example.beat"
CELERY_LEADER_ELECTION_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_LEADER_ELECTION_IDENTITY = INSTANCE
CELERY_LEADER_ELECTION_LEASE_DURATION = LEASE
CELERY_LEADER_ELECTION_RENEW_DEADLINE = RENEW
CELERY_LEADER_ELECTION_RETRY_PERIOD = RETRY

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {"celery_leader": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}
