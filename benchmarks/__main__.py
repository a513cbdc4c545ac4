"""Run one benchmark: ``python -m benchmarks NAME [ARGS...]``; without NAME, list them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _names() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [ARGS...]\nbenchmarks: " + ", ".join(_names()))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in _names():
        print(f"unknown benchmark {name!r}; choose from: {', '.join(_names())}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
