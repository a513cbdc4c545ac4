"""Counting how often a thread wakes up, or a method is called, for the tests that bound
what an idle standby does.

A thread's voluntary context switches (Linux: ``/proc/self/task/<tid>/status``) count the
times it blocked (a poll, a lock, a read) and was woken again: a count, not a time, so an
upper bound on it over an idle interval holds however slow the machine is (a slow machine
wakes a blocked thread less often, never more).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest


def wakeups(thread: threading.Thread) -> int:
    """Voluntary context switches of ``thread`` so far."""
    if not sys.platform.startswith("linux"):
        pytest.skip("counts wake-ups through /proc (Linux)")
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in the status of thread {thread.name}")


def count_calls(obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.name`` from now on (the count is element 0 of the list)."""
    calls = [0]
    original = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls
