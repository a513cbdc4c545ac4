"""URL -> backend, through the entry-point group ``celery_leader.backends``.

A third-party backend registers its scheme there (``myscheme = mypkg.mod:MyBackend``).
The built-in schemes are also known by name, so that a missing extra gives the exact
``pip install`` to run, and so that a source checkout works without installed metadata.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from .lock import CAPABILITY_NAMES, Backend, ConfigurationError
from .urls import ambiguous_userinfo, redact, scrub

__all__ = [
    "open_backend",
    "available_schemes",
    "default_url",
    "default_state_dir",
    "backend_class",
    "read_url_file",
    "url_scheme",
]

log = logging.getLogger(__name__)

GROUP = "celery_leader.backends"
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.\-]*)://")
ENV_URL = "CELERY_LEADER_URL"
ENV_URL_FILE = "CELERY_LEADER_URL_FILE"

#: scheme -> (module:Class, extra that provides its dependencies)
BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("celery_leader.backends.memory:MemoryBackend", None),
    "file": ("celery_leader.backends.file:FileBackend", None),
    "redis": ("celery_leader.backends.redis:RedisBackend", "redis"),
    "rediss": ("celery_leader.backends.redis:RedisBackend", "redis"),
    "unix": ("celery_leader.backends.redis:RedisBackend", "redis"),
    "redis+sentinel": ("celery_leader.backends.redis:RedisBackend", "redis"),
    "kubernetes": ("celery_leader.backends.kubernetes:KubernetesBackend", "kubernetes"),
    "k8s": ("celery_leader.backends.kubernetes:KubernetesBackend", "kubernetes"),
    "s3": ("celery_leader.backends.s3:S3Backend", "s3"),
    "git": ("celery_leader.backends.git:GitBackend", "git"),
    "git+file": ("celery_leader.backends.git:GitBackend", "git"),
    "git+ssh": ("celery_leader.backends.git:GitBackend", "git"),
    "git+http": ("celery_leader.backends.git:GitBackend", "git"),
    "git+https": ("celery_leader.backends.git:GitBackend", "git"),
    "gossip": ("celery_leader.backends.gossip:GossipBackend", "gossip"),
    "django": ("django_leader.backend:DjangoBackend", "django"),
    "postgresql": ("celery_leader.backends.postgresql:PostgresBackend", "postgresql"),
    "postgres": ("celery_leader.backends.postgresql:PostgresBackend", "postgresql"),
    "etcd": ("celery_leader.backends.etcd:EtcdBackend", None),
    "zookeeper": ("celery_leader.backends.zookeeper:ZooKeeperBackend", "zookeeper"),
}


def default_state_dir() -> Path:
    """Where the embedded default keeps its lease files: ``$XDG_STATE_HOME/celery-leader``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "celery-leader"


def default_url() -> str:
    """``CELERY_LEADER_URL``, else the URL in the file ``CELERY_LEADER_URL_FILE`` names,
    else a ``file://`` directory in the user's state directory."""
    url = os.environ.get(ENV_URL, "").strip()
    path = os.environ.get(ENV_URL_FILE, "").strip()
    if url and path:
        raise ConfigurationError(f"both ${ENV_URL} and ${ENV_URL_FILE} are set; set only one of them")
    if url:
        return url
    if path:
        return read_url_file(path)
    return "file://" + str(default_state_dir())


def read_url_file(path: str | os.PathLike[str]) -> str:
    """The lock URL kept in a file (a mounted secret), so that it is not in ``ps`` or the
    environment. One line; surrounding whitespace is ignored. Errors never show the content."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(64 * 1024 + 1)
            mode = os.fstat(fh.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigurationError(f"cannot read the lock URL from {path}: {reason}") from None
    url = text.strip()
    if not url or "\n" in url or len(text) > 64 * 1024:
        raise ConfigurationError(f"{path} must hold the lock URL on one line (it is empty or has several lines)")
    if mode & 0o004:
        log.warning("%s holds the lock URL and is readable by every user: chmod o-r %s", path, path)
    return url


def _entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def available_schemes() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()))


def _load(target: str) -> type[Backend]:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise ConfigurationError(f"{target} is not a celery_leader.lock.Backend subclass")
    return obj


def backend_class(scheme: str) -> type[Backend]:
    """The backend class serving ``scheme``; errors name what to install or type instead."""
    scheme = scheme.lower()
    target = _entry_points().get(scheme)
    builtin = BUILTIN.get(scheme)
    if target is None and builtin is not None:
        target = builtin[0]
    if target is None:
        raise ConfigurationError(
            f"unknown lock URL scheme {scheme!r}; installed schemes: {', '.join(available_schemes())}. "
            f"A third-party backend registers its scheme in the {GROUP!r} entry-point group."
        )
    try:
        return _load(target)
    except ImportError as exc:
        extra = builtin[1] if builtin else None
        hint = f"pip install 'celery-leader[{extra}]'" if extra else "install the package that provides it"
        raise ConfigurationError(
            f"the {scheme}:// backend needs a package that is not installed ({exc.name or exc}); run: {hint}"
        ) from exc


def url_scheme(url: str) -> str:
    """The scheme of ``url`` from its raw text ('' without ``scheme://``); never raises."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def open_backend(url: str | None = None, *, require: Iterable[str] = ()) -> Backend:
    """Make the backend for ``url`` (default: :func:`default_url`).

    ``require`` names capabilities (``linearizable``, ``watch``, ``partition_safe``) the
    backend must have; one that lacks any is refused with :class:`ConfigurationError`.
    Every error names the fix and carries the URL only redacted: messages of the backend's
    own parser (and of the libraries it calls) are scrubbed of the URL's secrets.
    """
    required = (require,) if isinstance(require, str) else tuple(require)
    unknown = [c for c in required if c not in CAPABILITY_NAMES]
    if unknown:
        raise ConfigurationError(
            f"unknown capability {unknown[0]!r} in require=; known: {', '.join(CAPABILITY_NAMES)}"
        )
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"the lock URL must be text, got {type(url).__name__}")
    url = (url or "").strip() or default_url()
    scheme = url_scheme(url)
    if not scheme:
        raise ConfigurationError(
            f"lock URL {redact(url)!r} has no scheme; write for example file:///var/lib/celery-leader, "
            "redis://localhost:6379/0 or kubernetes://my-namespace"
        )
    problem = ambiguous_userinfo(url)
    if problem:
        raise ConfigurationError(problem)
    cls = backend_class(scheme)
    try:
        backend = cls.from_url(url)
    except ConfigurationError as exc:
        exc.args = (scrub(exc, url),)
        raise exc from (exc.__cause__ if isinstance(exc.__cause__, ImportError) else None)
    except (ValueError, TypeError) as exc:  # a parser's own error (a bad IPv6 host, a port)
        raise ConfigurationError(f"cannot use the lock URL {redact(url)}: {scrub(exc, url)}") from None
    missing = [c for c in required if not getattr(backend.capabilities, c)]
    if missing:
        shown = backend.describe()
        backend.close()
        raise ConfigurationError(
            f"{shown} is not {' and not '.join(missing)}, which this use requires; choose a backend that is "
            "(a single redis://, kubernetes://, etcd://, postgresql:// or django://)"
        )
    log.debug("opened backend %s", backend.describe())
    return backend
