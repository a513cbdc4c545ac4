"""Django integration of celery-leader: run management commands and schedulers on one host only.

Add ``"django_leader"`` to ``INSTALLED_APPS``. Nothing here starts an election by itself:
elections start only in ``runasleader``, in a command decorated with :func:`leader_only`, or
in your own code (:func:`django_leader.runner.election`). See docs/django.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["leader_only", "LeadershipLost", "NotLeader"]


def __getattr__(name: str) -> Any:
    # lazy: importing the package must not import models before the app registry is ready
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
