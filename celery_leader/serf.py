"""Old import path of :mod:`celery_leader.backends.gossip.serf` (kept for existing imports)."""

import sys

from .backends.gossip import serf as _impl

sys.modules[__name__] = _impl
