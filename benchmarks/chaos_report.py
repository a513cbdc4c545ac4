"""Aggregate every stored chaos run into docs/benchmarks.md's chaos tables.

``python -m benchmarks chaos_report [--print]``

Reads ``benchmarks/results/chaos/*.json`` (one file per run, written by ``chaos`` and
``chaos_integrations``) and rewrites the part of docs/benchmarks.md between the
``chaos-report`` markers: per backend or integration, the runs, their dates, the faults by
kind, terms, overlaps, token regressions, duplicates, and the time without a leader after
each kind of fault against the design's bound (p50, max, count over the bound).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks._common import percentile, table
from benchmarks.chaos import RUNS_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- chaos-report:begin -->", "<!-- chaos-report:end -->"


def load_runs(runs_dir: Path = RUNS_DIR) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not a chaos run ({exc}); move it away or delete it") from None
    return runs


def _dates(runs: list[dict[str, Any]]) -> str:
    days = sorted({r["date"][:10] for r in runs})
    return ", ".join(days)


def _fenced_cell(group: list[dict[str, Any]], fenced: list[int | None]) -> str:
    """Replayed refusals; with the terms whose write the real Redis helper refused."""
    if not any(x is not None for x in fenced):
        return "-"
    cell = str(sum(x for x in fenced if x is not None))
    helper = [r["fenced"]["redis_refused_terms"] for r in group
              if isinstance(r.get("fenced"), dict) and "redis_refused_terms" in r["fenced"]]  # fmt: skip
    if helper:
        cell += f" (Redis helper: {sum(helper)} terms in {len(helper)} runs)"
    return cell


def aggregate(runs: list[dict[str, Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    """(one row per backend/integration, one row per backend/integration and fault kind)."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_name[run["backend"]].append(run)
    totals, gaps = [], []
    for name in sorted(by_name):
        group = by_name[name]
        kinds: Counter[str] = Counter()
        for run in group:
            kinds.update(Counter(f["kind"] for f in run["faults"]))
        loads = [x for r in group for x in r.get("load", [])]
        integration = any(r.get("integration") for r in group)
        failovers = sum(r.get("failovers", max(0, r["terms"] - 1)) for r in group)
        fenced = [r["fenced"]["refused"] if "fenced" in r and isinstance(r["fenced"], dict) else r.get("fenced_refusals")
                  for r in group]  # fmt: skip
        # RQ's first stored runs did not read the tokens from the worker's side (late sends
        # stored as None): their late sends, regressions and stale-token runs were not counted
        tokens_read = [r for r in group if not integration or r.get("late_sends", 0) is not None]
        partial = f" (counted in {len(tokens_read)} of {len(group)} runs)" if len(tokens_read) < len(group) else ""
        totals.append([
            name, len(group), sum(kinds.values()),
            ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
            sum(r["terms"] for r in group), failovers,
            f"**{sum(r['overlaps'] for r in tokens_read)}**{partial}" if tokens_read else "not counted",
            f"**{sum(r['token_regressions'] for r in tokens_read)}**{partial}" if tokens_read else "not counted",
            f"**{sum(r.get('duplicates', 0) for r in group)}**" if integration else "-",
            _fenced_cell(tokens_read, [f for r, f in zip(group, fenced) if r in tokens_read]) + partial
            if tokens_read else "not counted",
            f"{max(loads):.1f}" if loads else "-", _dates(group),
        ])  # fmt: skip
        for kind in sorted(kinds):
            faults = [f for r in group for f in r["faults"] if f["kind"] == kind]
            values = [f["leaderless"] for f in faults]
            bounds = [f["bound"] for f in faults if f.get("bound") is not None]
            over = sum(1 for f in faults if f.get("bound") is not None and f["leaderless"] > f["bound"])
            gaps.append([name, kind, len(faults), percentile(values, 50), max(values),
                         f"{min(bounds):.2f}-{max(bounds):.2f}" if bounds and min(bounds) != max(bounds)
                         else (f"{bounds[0]:.2f}" if bounds else "-"), over])  # fmt: skip
    return totals, gaps


def render(runs: list[dict[str, Any]]) -> str:
    totals, gaps = aggregate(runs)
    return "\n".join([
        BEGIN,
        f"Aggregated by `python -m benchmarks chaos_report` from {len(runs)} stored runs "
        "(`benchmarks/results/chaos/`, one JSON file per run with its seed).",
        "",
        table(totals, ["backend / integration", "runs", "faults", "by kind", "terms", "failovers",
                       "overlaps / late sends", "token regressions", "duplicates", "stale writes fenced",
                       "max load (1 min)", "dates"]),
        "",
        "Time without a leader after each fault, against the bound the design promises:",
        "",
        table(gaps, ["backend / integration", "fault", "n", "p50 s", "max s", "bound s", "over bound"]),
        END,
    ])  # fmt: skip


def update_doc(text: str, block: str) -> str:
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    marker = "## Safety under faults (the chaos harness)\n"
    if marker not in text:
        raise SystemExit(f"{DOC}: no chaos section ({marker.strip()!r}) to put the tables in")
    head, rest = text.split(marker, 1)
    return head + marker + "\n" + block + "\n" + rest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chaos_report", description=__doc__.split("\n")[0])
    parser.add_argument("--print", action="store_true", help="print the tables instead of updating the doc")
    args = parser.parse_args(argv)
    runs = load_runs()
    if not runs:
        print(f"no stored runs in {RUNS_DIR}: run `python -m benchmarks chaos` first")
        return 1
    block = render(runs)
    if args.print:
        print(block)
        return 0
    DOC.write_text(update_doc(DOC.read_text(), block))
    print(f"{DOC}: chaos tables from {len(runs)} runs")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
