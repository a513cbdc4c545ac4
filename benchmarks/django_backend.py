"""Renew latency of the ``django://`` backend against a raw conditional UPDATE.

``python -m benchmarks django_backend [--n N] [--databases sqlite,pg,maria]``

For each database: N sequential renewals through ``DjangoLock.update`` (what the elected
leader does every ``retry_period``), then N raw ``UPDATE ... WHERE name = %s AND version = %s``
statements on a plain DB-API connection in autocommit (the floor: one round trip, one
commit). The ratio says what the ORM-free but Django-wrapped path costs on top. Writes
``benchmarks/results/django_backend.json``; the Markdown table goes into docs/bench-django.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator

from ._common import summary, table, write_results

DB_NAME = f"django_leader_bench_{uuid.uuid4().hex[:8]}"


def _configure(tmp: str) -> None:
    from django.conf import settings

    with contextlib.suppress(ImportError):  # Django's MySQL backend on PyMySQL (wheels only)
        import pymysql

        pymysql.install_as_MySQLdb()
    settings.configure(
        INSTALLED_APPS=["django_leader"],
        USE_TZ=True,
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(tmp, "bench.sqlite3")},
            "pg": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": DB_NAME,
                "USER": "postgres",
                "HOST": "127.0.0.1",
                "PORT": "5432",
            },
            "maria": {
                "ENGINE": "django.db.backends.mysql",
                "NAME": DB_NAME,
                "USER": "root",
                "HOST": "127.0.0.1",
                "PORT": "3306",
            },
        },
    )
    import django

    django.setup()


@contextlib.contextmanager
def _database(kind: str) -> Iterator[Callable[[], Any]]:
    """Create the throwaway database, migrate it, and yield a raw DB-API connection factory."""
    from django.core.management import call_command
    from django.db import connections

    if kind == "sqlite":
        import sqlite3

        call_command("migrate", "django_leader", database="default", verbosity=0)
        path = connections.settings["default"]["NAME"]
        yield lambda: sqlite3.connect(path, isolation_level=None)
        return
    if kind == "pg":
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{DB_NAME}"')

        def raw_pg() -> Any:
            conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=DB_NAME)
            conn.autocommit = True
            return conn

        try:
            call_command("migrate", "django_leader", database="pg", verbosity=0)
            yield raw_pg
        finally:
            connections["pg"].close()
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            admin.close()
        return
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", user="root", password="")
    admin.autocommit(True)
    admin.cursor().execute(f"CREATE DATABASE `{DB_NAME}`")

    def raw_maria() -> Any:
        conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=DB_NAME)
        conn.autocommit(True)
        return conn

    try:
        call_command("migrate", "django_leader", database="maria", verbosity=0)
        yield raw_maria
    finally:
        connections["maria"].close()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{DB_NAME}`")
        admin.close()


def _measure(kind: str, n: int, warmup: int = 50) -> dict[str, Any]:
    from celery_leader.record import LeaderRecord, encode_record
    from django_leader.backend import DjangoBackend

    alias = {"sqlite": "default", "pg": "pg", "maria": "maria"}[kind]
    record = LeaderRecord(
        holder="bench", lease_duration=15.0, acquire_time=time.time(), renew_time=time.time(), transitions=1
    )
    with _database(kind) as raw_connect:
        backend = DjangoBackend.from_url(f"django://{alias}")
        lock = backend.lock("bench")
        version = lock.create(record, 5.0)
        raw_lock = backend.lock("bench-raw")
        raw_version = int(raw_lock.create(record, 5.0))
        conn = raw_connect()
        cur = conn.cursor()
        placeholder = "?" if kind == "sqlite" else "%s"
        sql = (
            f"UPDATE django_leader_lease SET record = {placeholder}, version = {placeholder} "
            f"WHERE name = {placeholder} AND version = {placeholder}"
        )
        django_times: list[float] = []
        raw_times: list[float] = []
        # interleaved, so that both see the same load on a shared machine
        for i in range(warmup + n):
            rec = record.evolve(renew_time=time.time())
            started = time.perf_counter()
            version = lock.update(rec, version, 5.0)
            elapsed = time.perf_counter() - started
            body = encode_record(record.evolve(renew_time=time.time())).decode()
            started = time.perf_counter()
            cur.execute(sql, (body, raw_version + 1, "bench-raw", raw_version))
            raw_elapsed = time.perf_counter() - started
            if cur.rowcount != 1:
                raise RuntimeError("raw conditional UPDATE lost its row")
            raw_version += 1
            if i >= warmup:
                django_times.append(elapsed)
                raw_times.append(raw_elapsed)
        get_times: list[float] = []
        for _ in range(n):
            started = time.perf_counter()
            lock.get(5.0)
            get_times.append(time.perf_counter() - started)
        conn.close()
        backend.close()
    django_s, raw_s, get_s = summary(django_times), summary(raw_times), summary(get_times)
    return {
        "database": kind,
        "renew_django": django_s,
        "renew_raw": raw_s,
        "get_django": get_s,
        "ratio_p50": django_s["p50"] / raw_s["p50"],
        "ratio_mean": django_s["mean"] / raw_s["mean"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks django_backend")
    parser.add_argument("--n", type=int, default=2000, help="renewals per database")
    parser.add_argument("--databases", default="sqlite,pg,maria")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="django-leader-bench-")
    _configure(tmp)
    results = []
    for kind in args.databases.split(","):
        try:
            results.append(_measure(kind.strip(), args.n))
        except Exception as exc:  # noqa: BLE001 - a missing server is reported, the others still run
            print(f"{kind}: skipped ({exc})", file=sys.stderr)
    rows = [
        (
            r["database"],
            r["renew_django"]["p50"] * 1e6,
            r["renew_django"]["p99"] * 1e6,
            r["renew_raw"]["p50"] * 1e6,
            r["renew_raw"]["p99"] * 1e6,
            r["ratio_p50"],
            r["ratio_mean"],
            r["get_django"]["p50"] * 1e6,
        )
        for r in results
    ]
    header = [
        "database",
        "renew p50 µs",
        "renew p99 µs",
        "raw UPDATE p50 µs",
        "raw p99 µs",
        "ratio p50",
        "ratio mean",
        "get p50 µs",
    ]
    print(table(rows, header))
    path = write_results(
        "django_backend",
        {"n": args.n, "results": results, "command": "python -m benchmarks django_backend " + " ".join(argv)},
    )
    print(f"wrote {path}")
    return 0 if results else 1
