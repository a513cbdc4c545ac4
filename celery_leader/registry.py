"""URL -> backend, through the entry-point group ``celery_leader.backends``.

A third-party backend registers its scheme there (``myscheme = mypkg.mod:MyBackend``).
The built-in schemes are also known by name, so that a missing extra gives the exact
``pip install`` to run, and so that a source checkout works without installed metadata.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

from .lock import CAPABILITY_NAMES, Backend, ConfigurationError

__all__ = ["open_backend", "available_schemes", "default_url", "default_state_dir", "backend_class"]

log = logging.getLogger(__name__)

GROUP = "celery_leader.backends"
ENV_URL = "CELERY_LEADER_URL"

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
}


def default_state_dir() -> Path:
    """Where the embedded default keeps its lease files: ``$XDG_STATE_HOME/celery-leader``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "celery-leader"


def default_url() -> str:
    """``CELERY_LEADER_URL``, else a ``file://`` directory in the user's state directory."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return url
    return "file://" + str(default_state_dir())


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


def open_backend(url: str | None = None, *, require: Iterable[str] = ()) -> Backend:
    """Make the backend for ``url`` (default: :func:`default_url`).

    ``require`` names capabilities (``linearizable``, ``watch``, ``partition_safe``) the
    backend must have; one that lacks any is refused with :class:`ConfigurationError`.
    """
    required = (require,) if isinstance(require, str) else tuple(require)
    unknown = [c for c in required if c not in CAPABILITY_NAMES]
    if unknown:
        raise ConfigurationError(
            f"unknown capability {unknown[0]!r} in require=; known: {', '.join(CAPABILITY_NAMES)}"
        )
    url = (url or "").strip() or default_url()
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigurationError(
            f"lock URL {url!r} has no scheme; write for example file:///var/lib/celery-leader, "
            "redis://localhost:6379/0 or kubernetes://my-namespace"
        )
    cls = backend_class(scheme)
    backend = cls.from_url(url)
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
