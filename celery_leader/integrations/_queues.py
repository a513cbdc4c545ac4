"""What the task-queue integrations (Huey, taskiq, periodiq) share: their election settings.

Each queue's scheduler builds one :class:`LeaderSettings` at start-up, without I/O beyond
parsing the URL, so that a typo stops the process with a one-line message before anything
is enqueued; the election itself starts later, in the scheduler's own thread or task.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..core import Timing, validate_identity, validate_name
from ..election import default_identity
from ..errors import ConfigurationError
from ..registry import ENV_URL, default_url, open_backend
from ..urls import redact

__all__ = ["LeaderSettings", "safe_name", "ELECTION_OPTIONS"]

#: keyword arguments every queue integration accepts for its election
ELECTION_OPTIONS = ("url", "name", "identity", "lease_duration", "renew_deadline", "retry_period")


def safe_name(text: str, fallback: str) -> str:
    """``text`` reduced to the characters every backend accepts in an election name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text or "").strip("._-")
    return cleaned or fallback


@dataclass(frozen=True)
class LeaderSettings:
    """Validated election settings; ``describe`` is the lock's place without secrets."""

    url: str
    name: str
    identity: str
    timing: Timing
    url_from_default: bool
    describe: str = field(default="")

    @classmethod
    def build(
        cls,
        *,
        name: str,
        url: str | None = None,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> LeaderSettings:
        """Validate everything and parse the URL (no lock is taken). Errors are one line."""
        if url is not None and not isinstance(url, str):
            raise ConfigurationError(
                f"leader URL must be a lock URL string such as redis://host:6379/0, got a {type(url).__name__}"
            )
        text = (url or "").strip() or os.environ.get(ENV_URL, "").strip()
        from_default = not text
        text = text or default_url()
        validate_name(name)
        who = default_identity() if identity is None else identity
        validate_identity(who)
        try:
            timing = Timing(float(lease_duration), float(renew_deadline), float(retry_period))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(
                f"lease_duration, renew_deadline and retry_period must be numbers of seconds ({exc})"
            ) from None
        try:
            backend = open_backend(text)
        except ConfigurationError as exc:
            raise ConfigurationError(f"leader URL {redact(text)} is not usable: {redact(str(exc))}") from None
        try:
            where = backend.describe()
        finally:
            with contextlib.suppress(Exception):
                backend.close()
        return cls(text, name, who, timing, from_default, redact(where))

    def election_kwargs(self) -> dict[str, Any]:
        t = self.timing
        return {
            "url": self.url,
            "identity": self.identity,
            "lease_duration": t.lease_duration,
            "renew_deadline": t.renew_deadline,
            "retry_period": t.retry_period,
        }
