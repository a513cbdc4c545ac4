"""Rolling upgrades from plain RedBeat: the leader also holds RedBeat's own lock.

Under ``-S leader`` RedBeat's own lock is switched off (the election replaces it). During
a rolling upgrade, though, plain RedBeat beats (old hosts) and ``-S leader`` beats (new
hosts) run side by side, and a plain beat only respects RedBeat's lock key. So while it
leads, a leader beat also holds that key, with the value ``celery-leader:<election>:<token>``:

* a plain beat that holds the key keeps it: the leader does not send until it is gone
  (the plain beat stopped and released it, or its TTL ran out), logging why;
* a plain beat that starts while the leader holds the key blocks in RedBeat's own
  ``beat_init`` acquire, as it would behind another plain beat;
* a key left by an earlier leader *of the same election* (a crashed one) is taken over
  at once by the next term, whose token is higher: the election already guarantees that
  the old term has stopped, so failover between leader beats stays as fast as before.

The key's TTL is ``max(3 x beat max interval, 2 x lease)``, renewed at every tick of the
leader, before anything is sent.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["RedBeatCoLock"]

# KEYS[1] RedBeat's lock key. ARGV: our value, our prefix, TTL ms, our token.
# Take or keep the key unless somebody else holds it: a plain RedBeat beat (any other
# value) or a later term of ours (a higher token).
HOLD_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  local prefix = ARGV[2]
  if string.sub(current, 1, #prefix) ~= prefix then return 0 end
  local theirs = tonumber(string.sub(current, #prefix + 1))
  if theirs == nil or theirs >= tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedBeatCoLock:
    """RedBeat's lock key, held by the leader beat for as long as it leads."""

    def __init__(self, client: Any, key: str, election: str, ttl: float) -> None:
        self.client = client
        self.key = key
        self.prefix = f"celery-leader:{election}:"
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.value: str | None = None
        self._waiting = False
        self._hold = client.register_script(HOLD_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def hold(self, token: int) -> bool:
        """Take or renew the key for term ``token``; False (do not send) if somebody else has it."""
        value = f"{self.prefix}{token}"
        try:
            ok = bool(self._hold(keys=[self.key], args=[value, self.prefix, self.ttl_ms, token]))
        except Exception as exc:  # noqa: BLE001 - cannot tell: fail closed, try again next tick
            log.warning("celery-leader: cannot check RedBeat's lock %r: %s; not sending", self.key, exc)
            return False
        if ok:
            if self._waiting or self.value != value:
                log.info("celery-leader: holding RedBeat's lock %r too (plain RedBeat beats stay out)", self.key)
            self.value, self._waiting = value, False
            return True
        if not self._waiting:
            self._waiting = True
            log.warning(
                "celery-leader: RedBeat's own lock %r is held by a beat without celery-leader (a rolling "
                "upgrade?): not sending until it stops and releases it",
                self.key,
            )
        self.value = None
        return False

    def release(self) -> None:
        """Give the key back (the term ended, or beat stops); only if it is still ours."""
        value, self.value = self.value, None
        if value is None:
            return
        try:
            self._release(keys=[self.key], args=[value])
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.debug("celery-leader: releasing RedBeat's lock failed: %s", exc)
