"""Settings of the django_leader tests (also used by their subprocesses).

The database names come from the environment so that the test session and the processes
it starts share them; ``conftest.py`` sets unique ones per session.
"""

import contextlib
import os
import tempfile

with contextlib.suppress(ImportError):  # Django's MySQL backend on PyMySQL: it installs from a wheel
    import pymysql

    pymysql.install_as_MySQLdb()

SECRET_KEY = "django-leader-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
#: the admin and view tests log users in; the default hasher spends ~0.3 s per password on purpose
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_leader",
    "tests.django.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
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
ROOT_URLCONF = "tests.django.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_LEADER_TEST_SQLITE")
        or os.path.join(tempfile.gettempdir(), "django-leader-tests.sqlite3"),
    },
    # never migrated: the E004 check and the missing-table error
    "empty": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": (os.environ.get("DJANGO_LEADER_TEST_SQLITE") or os.path.join(tempfile.gettempdir(), "dl.sqlite3"))
        + ".empty",
    },
    "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # nothing listens there: connection refused
    "gone": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "x",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "9",
    },
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DJANGO_LEADER_TEST_DB", "django_leader_tests"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    },
    "maria": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ.get("DJANGO_LEADER_TEST_DB", "django_leader_tests"),
        "USER": "root",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": "3306",
        "OPTIONS": {"charset": "utf8mb4"},
    },
}

# short leases: the tests wait for handovers
LEADER_ELECTION = {
    "URL": os.environ.get("DJANGO_LEADER_TEST_URL", "django://default"),
    "NAME": "tests",
    "LEASE_DURATION": 1.0,
    "RENEW_DEADLINE": 0.6,
    "RETRY_PERIOD": 0.2,
}

if os.environ.get("DJANGO_LEADER_TEST_LOGGING") == "1":  # subprocesses only: not the shared pytest process
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"celery_leader": {"handlers": ["stderr"], "level": "INFO"}},
    }
