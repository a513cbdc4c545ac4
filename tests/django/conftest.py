"""Django for the django_leader tests: settings, and one throwaway database per server.

SQLite always works; PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB
(127.0.0.1:3306, root without password) get a database created for the session and dropped
afterwards. A server that is not there skips on a laptop and fails in CI.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

SUFFIX = uuid.uuid4().hex[:10]
_TMP = tempfile.mkdtemp(prefix="django-leader-")
#: what the settings module reads; passed to subprocesses, never left in os.environ (the
#: other areas' tests start processes with a copy of os.environ)
TEST_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.django.settings",
    "DJANGO_LEADER_TEST_SQLITE": os.path.join(_TMP, "db.sqlite3"),
    "DJANGO_LEADER_TEST_DB": f"django_leader_{SUFFIX}",
}
_saved = {key: os.environ.get(key) for key in TEST_ENV}
os.environ.update(TEST_ENV)
try:
    import django

    django.setup()
finally:
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402

from tests.servers import unavailable  # noqa: E402

DB_NAME = TEST_ENV["DJANGO_LEADER_TEST_DB"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for ``python -m django ...`` children: same settings and databases."""
    env = {**os.environ, **TEST_ENV, "DJANGO_LEADER_TEST_LOGGING": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def sqlite_alias() -> str:
    call_command("migrate", verbosity=0, database="default")
    connections["default"].close()
    return "default"


@pytest.fixture(scope="session")
def pg_alias():
    try:
        import psycopg2
    except ImportError as exc:
        unavailable(f"psycopg2 not installed: {exc}")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.Error as exc:
        unavailable(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{DB_NAME}"')
    try:
        call_command("migrate", "django_leader", verbosity=0, database="pg")
        connections["pg"].close()
        yield "pg"
    finally:
        connections["pg"].close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def maria_alias():
    try:
        import pymysql
    except ImportError as exc:
        unavailable(f"PyMySQL not installed: {exc}")
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    except pymysql.Error as exc:
        unavailable(f"MariaDB on 127.0.0.1:3306 not reachable: {exc}")
    admin.autocommit(True)
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4")
    try:
        call_command("migrate", "django_leader", verbosity=0, database="maria")
        connections["maria"].close()
        yield "maria"
    finally:
        connections["maria"].close()
        cur.execute(f"DROP DATABASE IF EXISTS `{DB_NAME}`")
        admin.close()


@pytest.fixture(params=["sqlite", "pg", "maria"])
def alias(request) -> str:
    """Each database server in turn."""
    return request.getfixturevalue(f"{request.param}_alias")
