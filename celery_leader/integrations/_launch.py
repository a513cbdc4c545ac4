"""The console scripts of the queue integrations, started without importing the framework first.

``celery-leader-huey`` and the others are installed with celery-leader whatever extras were
chosen, so the framework may be missing. Its absence is then one line naming the extra to
install, exit status 2, instead of an ImportError traceback from the module's imports.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["huey", "periodiq", "arq", "rq"]

#: command -> (module with main(), packages it needs, the extra that installs them)
COMMANDS = {
    "huey": ("celery_leader.integrations.huey", ("huey",), "huey"),
    "periodiq": ("celery_leader.integrations.periodiq", ("periodiq", "dramatiq", "pendulum"), "periodiq"),
    "arq": ("celery_leader.integrations.arq", ("arq",), "arq"),
    "rq": ("celery_leader.integrations.rq.cli", ("rq", "click", "redis"), "rq"),
}


def launch(command: str, argv: list[str] | None = None) -> Any:
    module_name, packages, extra = COMMANDS[command]
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            print(f"celery-leader-{command}: {package} is not installed: pip install 'celery-leader[{extra}]'",
                  file=sys.stderr)  # fmt: skip
            return 2
    module = importlib.import_module(module_name)
    if command == "rq":
        return module.main(args=argv, prog_name="celery-leader-rq")
    return module.main(argv)


def huey() -> Any:
    return launch("huey")


def periodiq() -> Any:
    return launch("periodiq")


def arq() -> Any:
    return launch("arq")


def rq() -> Any:
    return launch("rq")
