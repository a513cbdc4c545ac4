"""rq-scheduler beside django-celery-beat: each in its own place.

rq-scheduler depends on the ``crontab`` package and django-celery-beat on ``python-crontab``;
both install a top-level module named ``crontab``, and ``crontab``'s package directory
shadows ``python-crontab``'s module whatever the install order, so the two cannot share one
environment (which is why rq-scheduler is not in the ``all`` extra). These tests therefore
install rq-scheduler and ``crontab`` into a directory of their own (``pip install
--target``, cached) unless rq-scheduler is importable already (``tox -e rq-scheduler``):

* in this process the directory goes at the *end* of ``sys.path``, so ``import crontab``
  still finds python-crontab here (rq-scheduler needs ``crontab`` only for cron strings,
  which these tests do not use);
* the processes of a :class:`tests.rq.harness.Fleet` get it in ``PYTHONPATH``, ahead of
  site-packages, so they run rq-scheduler exactly as its users install it (no other
  test process sees it).

Where pip cannot install it, those tests skip, and the session fails under
``CELERY_LEADER_REQUIRE_SERVICES=1`` like any missing server.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.servers import REQUIRED

#: what rq-scheduler needs that the test environment does not already have
PACKAGES = ["rq-scheduler==0.14.0", "crontab==1.0.5"]
SITE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "celery-leader-tests" / "rq-scheduler-0.14.0"

#: PYTHONPATH entry for the rqscheduler processes ("" where rq-scheduler is installed already)
RQ_SCHEDULER_PATH = ""
#: why rq-scheduler is not available ("" when it is)
RQ_SCHEDULER_MISSING = ""


def _install() -> str:
    marker = SITE / ".complete"
    if marker.exists():
        return ""
    SITE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--target", str(SITE), "--upgrade", *PACKAGES],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        return f"pip could not install {' '.join(PACKAGES)} into {SITE}: {done.stderr.strip()[-300:]}"
    marker.write_text("ok\n")
    return ""


if importlib.util.find_spec("rq_scheduler") is None:
    RQ_SCHEDULER_MISSING = _install()
    if not RQ_SCHEDULER_MISSING:
        RQ_SCHEDULER_PATH = str(SITE)
        sys.path.append(RQ_SCHEDULER_PATH)

if RQ_SCHEDULER_MISSING and REQUIRED:
    raise RuntimeError(f"rq-scheduler tests cannot run: {RQ_SCHEDULER_MISSING}")
