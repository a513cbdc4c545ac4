"""Configuration shared by the RQ integrations: one set of keys, one default lock.

The keys are django_leader's ``LEADER_ELECTION`` keys (``URL``, ``NAME``, ``IDENTITY``,
``LEASE_DURATION``, ``RENEW_DEADLINE``, ``RETRY_PERIOD``) plus ``CATCH_UP`` for the cron
scheduler. They are read, first match wins, from:

1. explicit arguments (command-line flags, constructor keywords, a ``leader_election``
   class attribute on a subclass);
2. ``LEADER_ELECTION`` in RQ's settings module (``rq ... -c settings``);
3. in a configured Django project (django-rq): ``settings.RQ["LEADER_ELECTION"]`` (all
   keys), then django_leader's ``settings.LEADER_ELECTION`` (``URL``, ``IDENTITY`` and the
   timing; its ``NAME`` becomes a prefix, ``NAME.rq.cron``, so that RQ's elections never
   share a name with django_leader's own; other keys are django_leader's business);
4. the environment: ``CELERY_LEADER_URL``, ``CELERY_LEADER_LEASE_DURATION``,
   ``CELERY_LEADER_RENEW_DEADLINE``, ``CELERY_LEADER_RETRY_PERIOD``,
   ``CELERY_LEADER_CATCH_UP``.

With no URL anywhere, the lock lives in **the Redis that RQ itself uses** (the same
connection settings, keys under ``celery-leader:``): every RQ deployment has that Redis,
and it is the one server whose loss stops RQ anyway.

Nothing here does I/O except :func:`open_lock_backend`, which only builds the client.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from ...core import Timing, validate_identity, validate_name
from ...election import default_identity
from ...errors import ConfigurationError
from ...lock import Backend
from ...registry import ENV_URL, open_backend
from ...urls import redact

__all__ = [
    "CATCH_UP_POLICIES",
    "KEYS",
    "LeaderConfig",
    "META_TOKEN",
    "leader_config",
    "election_name",
    "open_lock_backend",
    "redis_url_of",
    "sent_token",
]

log = logging.getLogger(__name__)

#: keys of ``job.meta`` stamped on every job a leader enqueues (the names of beat's headers)
META_TOKEN = "celery_leader_token"
META_IDENTITY = "celery_leader_identity"
META_ELECTION = "celery_leader_election"
META_SENT_AT = "celery_leader_sent_at"

CATCH_UP_POLICIES = ("once", "skip")
KEYS = ("URL", "NAME", "IDENTITY", "LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD", "CATCH_UP")
_NUMBERS = ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")
_ENV = {
    "URL": ENV_URL,
    "LEASE_DURATION": "CELERY_LEADER_LEASE_DURATION",
    "RENEW_DEADLINE": "CELERY_LEADER_RENEW_DEADLINE",
    "RETRY_PERIOD": "CELERY_LEADER_RETRY_PERIOD",
    "CATCH_UP": "CELERY_LEADER_CATCH_UP",
}
DEFAULTS: dict[str, Any] = {"LEASE_DURATION": 15.0, "RENEW_DEADLINE": 10.0, "RETRY_PERIOD": 2.0}


@dataclass(frozen=True)
class LeaderConfig:
    """Validated election settings for one RQ scheduler process (plain data: survives a fork)."""

    url: str | None  # None: the RQ connection's Redis
    name: str | None  # None: the integration's default name
    identity: str
    timing: Timing
    catch_up: str | None
    source: str  # where the URL came from, for the start-up log line
    prefix: str | None = None  # from django_leader's NAME: put before the integration's default name
    identity_default: bool = True  # made up here: a forked process makes its own

    def for_this_process(self) -> LeaderConfig:
        """In a forked child: a default identity names this process, not its parent.

        (A scheduler process restarted by its worker must never reuse the identity of the
        one before it, which may still be the holder on record.)
        """
        return replace(self, identity=default_identity()) if self.identity_default else self

    def describe_url(self) -> str:
        return redact(self.url) if self.url else "the RQ connection's Redis"


_SHARED_WITH_DJANGO = ("URL", "IDENTITY", "LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")


def _django_layers() -> list[tuple[str, dict[str, Any]]]:
    """The Django settings layers when a project is configured (never configures one)."""
    try:
        from django.conf import settings  # type: ignore[import-untyped]
    except ImportError:
        return []
    try:
        if not settings.configured:
            return []
        rq_settings = getattr(settings, "RQ", None) or {}
        shared = getattr(settings, "LEADER_ELECTION", None) or {}
    except Exception:  # noqa: BLE001 - a broken settings module is Django's error to report
        return []
    layers = []
    if isinstance(rq_settings, Mapping) and rq_settings.get("LEADER_ELECTION") is not None:
        layers.append(("settings.RQ", _check_mapping(rq_settings["LEADER_ELECTION"], "settings.RQ['LEADER_ELECTION']")))
    if isinstance(shared, Mapping):
        values = {k: shared[k] for k in _SHARED_WITH_DJANGO if shared.get(k) is not None}
        if isinstance(shared.get("NAME"), str) and shared["NAME"].strip():
            values["PREFIX"] = shared["NAME"].strip()
        layers.append(("settings.LEADER_ELECTION", values))
    return layers


def _check_mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a dict of {', '.join(KEYS)}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise ConfigurationError(f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KEYS)}")
    return {k: v for k, v in raw.items() if v is not None}


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, var in _ENV.items():
        value = env.get(var, "").strip()
        if value:
            found[key] = value
    return found


def leader_config(
    explicit: Mapping[str, Any] | None = None,
    *,
    rq_settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    use_django: bool = True,
) -> LeaderConfig:
    """Merge the sources (see the module docstring) and validate; errors name the key to fix."""
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, Any]]] = [("arguments", _check_mapping(explicit, "the leader options"))]
    if rq_settings is not None:
        layers.append(
            ("RQ settings", _check_mapping(rq_settings.get("LEADER_ELECTION"), "LEADER_ELECTION in the RQ settings"))
        )
    if use_django:
        layers.extend(_django_layers())
    layers.append(("environment", _env_values(env)))

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in layers:
        for key, value in values.items():
            if key not in merged:
                merged[key], origin[key] = value, where

    numbers = {}
    for key in _NUMBERS:
        value = merged.get(key, DEFAULTS[key])
        hint = _ENV[key] if origin.get(key) == "environment" else f"LEADER_ELECTION[{key!r}]"
        if isinstance(value, bool):
            raise ConfigurationError(f"{hint} must be a number of seconds, got {value!r}")
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{hint} must be a number of seconds, got {value!r}") from None
    try:
        timing = Timing(numbers["LEASE_DURATION"], numbers["RENEW_DEADLINE"], numbers["RETRY_PERIOD"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (LEASE_DURATION / RENEW_DEADLINE / RETRY_PERIOD)") from None

    url = merged.get("URL")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise ConfigurationError(f"LEADER_ELECTION['URL'] must be a lock URL such as redis://host:6379/0, got {redact(url)!r}")
    name = merged.get("NAME")
    prefix = merged.get("PREFIX") if name is None else None
    if prefix is not None:
        try:
            validate_name(prefix)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc} (settings.LEADER_ELECTION['NAME'])") from None
    if name is not None:
        try:
            validate_name(name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc} (LEADER_ELECTION['NAME'] / --leader-name)") from None
    identity = merged.get("IDENTITY") or default_identity()
    try:
        validate_identity(identity)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (LEADER_ELECTION['IDENTITY'] / --identity)") from None
    catch_up = merged.get("CATCH_UP")
    if catch_up is not None and catch_up not in CATCH_UP_POLICIES:
        raise ConfigurationError(f"CATCH_UP must be one of {', '.join(CATCH_UP_POLICIES)}, got {catch_up!r}")
    return LeaderConfig(
        url=url.strip() if url else None,
        name=name,
        identity=identity,
        timing=timing,
        catch_up=catch_up,
        source=origin.get("URL", "default"),
        identity_default=not merged.get("IDENTITY"),
        prefix=prefix,
    )


def with_name(config: LeaderConfig, default: str) -> LeaderConfig:
    """The configured name, else ``default`` (after django_leader's NAME, if there is one)."""
    if config.name:
        return config
    return replace(config, name=f"{config.prefix}.{default}" if config.prefix else default)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def election_name(prefix: str, part: str) -> str:
    """``prefix.part`` with ``part`` reduced to the characters names allow.

    When the reduction changed ``part`` (a queue called ``emails:high``), a short hash of
    the original is appended so that two different queues never share an election.
    """
    clean = _UNSAFE.sub("-", part).strip("._-") or "q"
    if clean != part:
        clean = f"{clean[:180]}-{hashlib.sha1(part.encode()).hexdigest()[:8]}"
    return validate_name(f"{prefix}.{clean}")


def redis_url_of(connection: Any) -> str:
    """A ``redis://`` / ``rediss://`` / ``unix://`` URL reaching the server of a redis-py client.

    Refuses what it cannot reproduce faithfully (Sentinel, cluster, custom pools) with the
    setting to use instead, rather than guessing a server.
    """
    pool = getattr(connection, "connection_pool", None)
    kwargs = dict(getattr(pool, "connection_kwargs", None) or {})
    cls_name = getattr(getattr(pool, "connection_class", None), "__name__", "")
    if pool is None or type(pool).__name__ not in ("ConnectionPool", "BlockingConnectionPool") or not cls_name:
        raise ConfigurationError(
            "cannot derive the lock URL from this RQ connection "
            f"({type(pool).__name__ if pool is not None else type(connection).__name__}); "
            "set LEADER_ELECTION['URL'] (or --leader-url, or CELERY_LEADER_URL)"
        )
    user = kwargs.get("username")
    password = kwargs.get("password")
    auth = ""
    if user or password:
        auth = quote(str(user or ""), safe="") + (":" + quote(str(password), safe="") if password else "") + "@"
    db = int(kwargs.get("db") or 0)
    if cls_name == "UnixDomainSocketConnection":
        path = kwargs.get("path") or ""
        return f"unix://{auth}{quote(path)}?db={db}"
    scheme = "rediss" if cls_name == "SSLConnection" else "redis"
    host = kwargs.get("host") or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = int(kwargs.get("port") or 6379)
    url = f"{scheme}://{auth}{host}:{port}/{db}"
    if scheme == "rediss":
        options = {k: kwargs.get(k) for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if kwargs.get(k)}
        reqs = kwargs.get("ssl_cert_reqs")
        if isinstance(reqs, str):
            options["ssl_cert_reqs"] = reqs
        if options:
            url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in options.items())
    return url


def check_url(config: LeaderConfig) -> None:
    """Parse a configured lock URL now (no connection is made): a typo stops start-up."""
    if config.url:
        backend = open_lock_backend(config, None)
        with contextlib.suppress(Exception):
            backend.close()


def open_lock_backend(config: LeaderConfig, connection: Any) -> Backend:
    """The backend for ``config.url``, or for RQ's own Redis when no URL is configured."""
    url = config.url or redis_url_of(connection)
    try:
        return open_backend(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"the lock URL {redact(url)!r} is not usable: {exc}") from None


def sent_token(job: Any) -> int | None:
    """In a job: the fencing token of the scheduler term that enqueued it (``None``: not by a leader).

    ``sent_token(rq.get_current_job())``; tokens only grow, so a side effect that keeps
    the highest token it has seen can refuse a job from a deposed leader.
    """
    from ...fencing import token_from_message

    meta = getattr(job, "meta", None) or {}
    return token_from_message(meta.get(META_TOKEN), f"job.meta[{META_TOKEN!r}]")


def stamp(meta: dict[str, Any] | None, leadership: Any, sent_at: float) -> dict[str, Any]:
    """``meta`` plus the fencing token and who sent it (a new dict)."""
    return {
        **(meta or {}),
        META_TOKEN: leadership.token,
        META_IDENTITY: leadership.identity,
        META_ELECTION: leadership.name,
        META_SENT_AT: sent_at,
    }
