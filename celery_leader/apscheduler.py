"""Old import path of :mod:`celery_leader.integrations.apscheduler` (kept: configs name it)."""

import sys

from .integrations import apscheduler as _impl

sys.modules[__name__] = _impl
