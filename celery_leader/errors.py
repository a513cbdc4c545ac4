"""Every error celery-leader raises, in one tree under :class:`CeleryLeaderError`.

``except celery_leader.CeleryLeaderError`` catches all of them. The old import paths
(``celery_leader.lock.Conflict``, ``django_leader.conf.SettingsError``, ...) name the
same classes.

::

    CeleryLeaderError
    ├── LockError                      a backend call failed
    │   ├── Conflict                   lost a compare-and-swap race (normal)
    │   ├── BackendUnavailable         not reachable, or no answer in time (retried)
    │   └── ConfigurationError         cannot work as configured; the message names the fix
    │       └── SettingsError          Django's LEADER_ELECTION setting is malformed
    ├── RecordDecodeError              stored bytes are not a leader record
    ├── NotLeader                      another instance leads, or none was elected in time
    ├── RegressionError                a write would not raise the fencing token
    ├── StaleTokenError                a fenced write carried a token below one already seen
    ├── InvalidTokenError              a fenced write was given something that is not a token
    └── ElectionStopped                start() of an election that was stopped (make a new one)

``ConfigurationError`` and ``RecordDecodeError`` are also ``ValueError``\\ s;
``InvalidTokenError`` is both a ``TypeError`` and a ``ValueError``.
``django_leader.runner.LeadershipLost`` is deliberately a ``BaseException`` (like
``KeyboardInterrupt``), so that leader-only code cannot swallow it with
``except Exception``; it is not part of this tree.
"""

from __future__ import annotations

__all__ = [
    "CeleryLeaderError",
    "LockError",
    "Conflict",
    "BackendUnavailable",
    "ConfigurationError",
    "SettingsError",
    "RecordDecodeError",
    "NotLeader",
    "RegressionError",
    "StaleTokenError",
    "InvalidTokenError",
    "ElectionStopped",
]


class CeleryLeaderError(Exception):
    """The root of every error celery-leader raises."""


class LockError(CeleryLeaderError):
    """Base class of the errors a backend raises."""


class Conflict(LockError):
    """Lost a compare-and-swap race (the object exists, or its version moved on). Normal."""


class BackendUnavailable(LockError):
    """The backend could not be reached or did not answer in time. Retried."""


class ConfigurationError(LockError, ValueError):
    """The configuration cannot work (bad URL, missing bucket, no permission).

    Raised at start-up; the message names the fix.
    """


class SettingsError(ConfigurationError):
    """Django's ``LEADER_ELECTION`` setting is malformed (wrong type, unknown key)."""


class RecordDecodeError(CeleryLeaderError, ValueError):
    """The stored bytes are not a leader record."""


class NotLeader(CeleryLeaderError):
    """Another instance leads (``skip``), or this one was not elected within the wait timeout."""

    def __init__(self, message: str, *, holder: str | None = None, skipped: bool = False) -> None:
        super().__init__(message)
        self.holder = holder
        self.skipped = skipped


class RegressionError(CeleryLeaderError):
    """The fence already holds a token at or above the one being written."""


class StaleTokenError(CeleryLeaderError):
    """A fenced write carried a fencing token lower than one the resource has already seen.

    The writer's term has ended (a newer leader wrote with a higher token): stop its work.
    """

    def __init__(self, message: str, *, token: int | None = None, seen: int | None = None) -> None:
        super().__init__(message)
        self.token = token
        self.seen = seen


class InvalidTokenError(CeleryLeaderError, TypeError, ValueError):
    """A fenced write was given a token that is not a non-negative 64-bit integer (``None``, a string, -1).

    Usually the work is not running under a leader (no token in the message or the
    environment): hand it ``leadership.token``.
    """


class ElectionStopped(CeleryLeaderError, RuntimeError):
    """``start()`` of an election that was already stopped: an election runs once; make a new one."""
