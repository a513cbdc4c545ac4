"""``settings.LEADER_ELECTION``: defaults, reading and validation.

Every key is optional::

    LEADER_ELECTION = {
        "URL": "django://default",   # lock backend; default: this project's database
        "NAME": "django",            # default election name (runasleader uses NAME.<command>)
        "IDENTITY": None,            # default: <hostname>-<pid>-<random>
        "LEASE_DURATION": 15.0,      # seconds (client-go defaults)
        "RENEW_DEADLINE": 10.0,
        "RETRY_PERIOD": 2.0,
        "STATUS_PERMISSION": None,   # e.g. "django_leader.view_lease": the status view
                                     # then answers 403 to users without it
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_leader.core import Timing
from celery_leader.errors import SettingsError

__all__ = ["DEFAULTS", "LeaderSettings", "leader_settings", "SettingsError"]

DEFAULTS: dict[str, Any] = {
    "URL": "django://default",
    "NAME": "django",
    "IDENTITY": None,
    "LEASE_DURATION": 15.0,
    "RENEW_DEADLINE": 10.0,
    "RETRY_PERIOD": 2.0,
    "STATUS_PERMISSION": None,
}

_NUMBERS = ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")


@dataclass(frozen=True)
class LeaderSettings:
    url: str
    name: str
    identity: str | None
    lease_duration: float
    renew_deadline: float
    retry_period: float
    status_permission: str | None = None

    def timing(self) -> Timing:
        """Validated timing (raises ConfigurationError naming the fix)."""
        return Timing(self.lease_duration, self.renew_deadline, self.retry_period)

    def election_kwargs(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "identity": self.identity,
            "lease_duration": self.lease_duration,
            "renew_deadline": self.renew_deadline,
            "retry_period": self.retry_period,
        }


def leader_settings(raw: Any = None) -> LeaderSettings:
    """Read ``settings.LEADER_ELECTION`` (or ``raw``) merged over :data:`DEFAULTS`."""
    if raw is None:
        from django.conf import settings

        raw = getattr(settings, "LEADER_ELECTION", None) or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"LEADER_ELECTION must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise SettingsError(
            f"LEADER_ELECTION has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(DEFAULTS)}"
        )
    merged = {**DEFAULTS, **raw}
    for key in _NUMBERS:
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"LEADER_ELECTION[{key!r}] must be a number of seconds, got {value!r}")
    for key in ("URL", "NAME"):
        if not isinstance(merged[key], str) or not merged[key].strip():
            raise SettingsError(f"LEADER_ELECTION[{key!r}] must be a non-empty string, got {merged[key]!r}")
    permission = merged["STATUS_PERMISSION"]
    if permission is not None and (not isinstance(permission, str) or permission.count(".") != 1):
        raise SettingsError(
            "LEADER_ELECTION['STATUS_PERMISSION'] must be None or a permission 'app_label.codename', "
            f"e.g. 'django_leader.view_lease', got {permission!r}"
        )
    if merged["IDENTITY"] is not None and not isinstance(merged["IDENTITY"], str):
        raise SettingsError(f"LEADER_ELECTION['IDENTITY'] must be a string or None, got {merged['IDENTITY']!r}")
    return LeaderSettings(
        url=merged["URL"].strip(),
        name=merged["NAME"].strip(),
        identity=merged["IDENTITY"],
        lease_duration=float(merged["LEASE_DURATION"]),
        renew_deadline=float(merged["RENEW_DEADLINE"]),
        retry_period=float(merged["RETRY_PERIOD"]),
        status_permission=permission,
    )
