"""Benchmarks: ``python -m benchmarks NAME [ARGS]`` (or ``tox -e bench -- NAME``).

Each ``benchmarks/NAME.py`` has ``main(argv) -> int``, prints a table, and writes its raw
results to ``benchmarks/results/NAME.json``. Results and the machine are in docs/benchmarks.md.
"""
