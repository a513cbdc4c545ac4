"""celery-leader: leader election so that exactly one scheduler instance does the work."""

from .aio import AsyncElection
from .core import Timing
from .election import Election, Leadership, default_identity
from .errors import (
    CeleryLeaderError,
    InvalidTokenError,
    NotLeader,
    RecordDecodeError,
    RegressionError,
    StaleTokenError,
)
from .lock import (
    Backend,
    BackendUnavailable,
    Capabilities,
    ConfigurationError,
    Conflict,
    Lock,
    LockError,
    Versioned,
)
from .once import once_per, run_once_per
from .record import LeaderRecord
from .registry import default_url, open_backend

__version__ = "0.1.0"

__all__ = [
    "Election",
    "AsyncElection",
    "CeleryLeaderError",
    "NotLeader",
    "RecordDecodeError",
    "RegressionError",
    "StaleTokenError",
    "InvalidTokenError",
    "Leadership",
    "Timing",
    "default_identity",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "ConfigurationError",
    "Conflict",
    "LeaderRecord",
    "Lock",
    "LockError",
    "Versioned",
    "default_url",
    "open_backend",
    "once_per",
    "run_once_per",
]
