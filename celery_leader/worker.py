"""Old import path of :mod:`celery_leader.integrations.celery.worker` (kept: configs name it)."""

import sys

from .integrations.celery import worker as _impl

sys.modules[__name__] = _impl
