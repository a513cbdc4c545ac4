"""System checks (``manage.py check``): a wrong ``LEADER_ELECTION`` fails loudly at start-up.

==================== ============================================================
``django_leader.E001`` the URL cannot be used (no scheme, unknown scheme, bad URL)
``django_leader.E002`` the timings are invalid (they must satisfy
                       lease_duration > renew_deadline > 1.2 x retry_period > 0)
``django_leader.E003`` the URL's backend needs an extra that is not installed
``django_leader.E004`` ``django://`` without the ``django_leader`` migration applied
                       (a database check: ``check --database ALIAS``; skipped inside
                       ``migrate``, which is the fix)
``django_leader.E005`` ``LEADER_ELECTION`` is malformed (not a dict, unknown key, wrong type)
``django_leader.E006`` ``NAME`` or ``IDENTITY`` is not usable
``django_leader.W001`` the URL's backend is not partition-safe (Redis Sentinel): two
                       leaders are possible for a while after a failover
==================== ============================================================

No check opens a connection to a lock service or starts an election.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from celery_leader.core import validate_identity, validate_name
from celery_leader.lock import ConfigurationError, partition_warning
from celery_leader.urls import ambiguous_userinfo, redact, scrub

from .conf import SettingsError, leader_settings

HINT_SETTINGS = "Fix settings.LEADER_ELECTION (see docs/django.md)."


def _settings_or_error() -> tuple[Any, list[CheckMessage]]:
    try:
        return leader_settings(), []
    except SettingsError as exc:
        return None, [Error(str(exc), hint=HINT_SETTINGS, id="django_leader.E005")]


@register("django_leader")
def check_leader_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    conf, errors = _settings_or_error()
    if conf is None:
        return errors
    try:
        conf.timing()
    except ConfigurationError as exc:
        errors.append(Error(f"LEADER_ELECTION timings are invalid: {exc}", hint=HINT_SETTINGS, id="django_leader.E002"))
    try:
        validate_name(conf.name)
    except ConfigurationError as exc:
        errors.append(Error(f"LEADER_ELECTION['NAME']: {exc}", hint=HINT_SETTINGS, id="django_leader.E006"))
    if conf.identity is not None:
        try:
            validate_identity(conf.identity)
        except ConfigurationError as exc:
            errors.append(
                Error(
                    f"LEADER_ELECTION['IDENTITY']: {exc}",
                    hint="Remove it to get <hostname>-<pid>-<random>.",
                    id="django_leader.E006",
                )
            )
    errors.extend(_check_url(conf.url))
    return errors


def _check_url(url: str) -> list[CheckMessage]:
    """E001/E003 for the URL; every message shows the URL redacted (it may hold a password)."""
    from celery_leader.registry import backend_class, url_scheme

    shown = redact(url)
    scheme = url_scheme(url)
    if not scheme:
        return [
            Error(
                f"LEADER_ELECTION['URL'] {shown!r} has no scheme",
                hint="Write e.g. django://default, redis://localhost:6379/0 or file:///var/lib/celery-leader.",
                id="django_leader.E001",
            )
        ]
    problem = ambiguous_userinfo(url)
    if problem:
        return [Error(f"LEADER_ELECTION['URL']: {problem}", hint=HINT_SETTINGS, id="django_leader.E001")]
    try:
        cls = backend_class(scheme)
    except ConfigurationError as exc:
        if isinstance(exc.__cause__, ImportError):
            return [Error(str(exc), hint="Install the extra named in the message.", id="django_leader.E003")]
        return [Error(str(exc), hint="Use one of the installed schemes.", id="django_leader.E001")]
    try:
        # parsing only: backends open connections lazily
        backend = cls.from_url(url)
    except ConfigurationError as exc:
        return [Error(f"LEADER_ELECTION['URL'] {shown!r}: {scrub(exc, url)}", hint=HINT_SETTINGS, id="django_leader.E001")]
    except ImportError as exc:
        return [
            Error(
                f"LEADER_ELECTION['URL'] {shown!r}: {scrub(exc, url)}",
                hint="Install the missing package.",
                id="django_leader.E003",
            )
        ]
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a configuration error here
        return [
            Error(
                f"LEADER_ELECTION['URL'] {shown!r} is not usable: {scrub(exc, url)}",
                hint=HINT_SETTINGS,
                id="django_leader.E001",
            )
        ]
    unsafe = partition_warning(backend)
    backend.close()
    if unsafe:
        return [Warning(f"LEADER_ELECTION['URL']: {unsafe}", hint="Fine where an overlap is harmless.", id="django_leader.W001")]
    return []


def _inside_migrate() -> bool:
    """True when called by ``migrate``'s own pre-flight check (then the missing table is expected)."""
    from django.core.management.commands.migrate import Command as Migrate

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), Migrate):
            return True
        frame = frame.f_back
    return False


@register(Tags.database)
def check_lease_table(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Error]:
    """E004: the ``django://`` backend's database lacks the lease table."""
    if not databases:
        return []
    try:
        conf = leader_settings()
    except SettingsError:
        return []
    try:
        parts = urlsplit(conf.url)
    except ValueError:
        return []  # E001 reports it
    if parts.scheme != "django":
        return []
    alias = parts.netloc or parts.path.strip("/") or "default"
    if alias not in databases or _inside_migrate():
        return []
    from django.db import connections

    from .models import Lease, LeaseFence

    if alias not in connections.settings:
        return []  # E001 reports it
    connection = connections[alias]
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
    missing = [m._meta.db_table for m in (Lease, LeaseFence) if m._meta.db_table not in tables]
    if not missing:
        return []
    return [
        Error(
            f"the django://{alias} leader-election backend needs the table(s) {', '.join(missing)}, "
            f"which do not exist in database {alias!r}",
            hint=f"Run: python manage.py migrate django_leader --database {alias}",
            id="django_leader.E004",
        )
    ]
