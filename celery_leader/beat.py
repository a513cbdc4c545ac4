"""Old import path of :mod:`celery_leader.integrations.celery.beat` (kept: configs name it)."""

import sys

from .integrations.celery import beat as _impl

sys.modules[__name__] = _impl
