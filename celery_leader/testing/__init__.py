"""Test support, importable by plugin authors.

* :class:`LockContract` (in :mod:`celery_leader.testing.contract`): the backend contract suite.
* :mod:`celery_leader.testing.cluster`: N ``celery-leader run`` processes and a checker of
  their leadership logs (no overlap, tokens increase).

``LockContract`` needs pytest; the rest does not, so it is imported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LockContract", "sample_record", "race"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import contract

        return getattr(contract, name)
    raise AttributeError(name)
