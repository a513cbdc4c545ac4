"""Draw the benchmark results as PNG files: ``python -m benchmarks plots [--out docs/img]``.

Reads whatever ``benchmarks/results/*.json`` exist (each benchmark writes its own shape,
and more are added over time), finds the handover, takeover and failover-gap figures in
them, and draws into ``docs/img/``:

* ``handover.png``: graceful handover times, per backend, integration and peer;
* ``takeover.png``: crash takeover times in seconds, and ``takeover-over-lease.png`` in
  units of ``lease_duration`` where a benchmark reports that;
* ``gaps.png``: time without a leader after each fault (chaos harness, failover runs);
* ``peers.png``: takeover of the peers on Redis and Kubernetes, by tool, profile and signal;
* ``scale.png``: renew lateness with many elections, handover with many candidates;
* ``standby.png``: CPU of an idle standby per backend and driver, against issue 21's
  target (0.1 % of a core).

Where raw samples exist they are drawn as a box with the points; where a benchmark kept
only a summary, its p50 (dot) and p99 (bar end) are drawn. Files or keys that are missing
or shaped differently are skipped, and the script prints what it drew and what it skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from benchmarks._common import RESULTS, peer_missing

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
#: keys of a list element that name it better than its index
LABEL_KEYS = ("label", "tool", "backend", "database", "server", "profile", "signal", "kind", "scenario", "name")
NUMBER = (int, float)


@dataclass
class Series:
    """One distribution: raw samples in milliseconds, or only its p50/p99."""

    source: str
    label: str
    samples: list[float] = field(default_factory=list)
    p50: float | None = None
    p99: float | None = None
    #: "ms", or "lease" for values in units of lease_duration
    unit: str = "ms"
    timed_out: bool = False
    cap: float | None = None

    @property
    def name(self) -> str:
        return f"{self.source}: {self.label}" if self.label else self.source


# --- finding the figures in any JSON shape ---------------------------------------------------


def _element_label(item: Any, index: int) -> str:
    if isinstance(item, dict):
        parts = [
            str(item[k])
            for k in LABEL_KEYS
            if isinstance(item.get(k), (str, int)) and not isinstance(item.get(k), bool)
        ]
        if parts:
            return " ".join(parts)
    return f"#{index}"


def _walk(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Yield (path, value, parent) for every node; list elements are named by their labels."""
    yield path, obj, None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "machine":
                continue
            yield from _walk(value, path + (str(key),))
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        for i, item in enumerate(obj):
            yield from _walk(item, path + ("[" + _element_label(item, i) + "]",))


def _scale_of(path: tuple[str, ...]) -> tuple[str, float]:
    """How to turn a value at ``path`` into milliseconds (or lease units)."""
    joined = "/".join(p for p in path if not p.startswith("[")).lower()
    if "over_lease" in joined or "/lease_units" in joined:
        return "lease", 1.0
    if re.search(r"(_ms|ms)(/|$)", joined):
        return "ms", 1.0
    if re.search(r"(_us|us)(/|$)", joined):
        return "ms", 0.001
    return "ms", 1000.0  # seconds, the common default


def _kind(path: tuple[str, ...]) -> str | None:
    """handover / takeover / gaps, from the dict keys only (list element labels are free text)."""
    keys = tuple(p for p in path if not p.startswith("["))
    joined = "/".join(keys).lower()
    if "peers" in keys:
        return None  # drawn by draw_peers, with graceful and crash rows told apart
    if "lateness" in joined or "late" in keys[-1:]:
        return None
    if "handover" in joined:
        return "handover"
    if "takeover" in joined or "crash" in joined:
        return "takeover"
    if "gap" in joined or "leaderless" in joined:
        return "gaps"
    return None


def _is_numbers(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in value)
    )


def collect(results: Path) -> tuple[dict[str, list[Series]], list[str], list[str]]:
    """Every handover/takeover/gap distribution in every result file, grouped by kind."""
    groups: dict[str, list[Series]] = {"handover": [], "takeover": [], "gaps": []}
    used: list[str] = []
    skipped: list[str] = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name}: unreadable ({exc})")
            continue
        source = path.stem
        found = 0
        nodes = [(keys, value) for keys, value, _ in _walk(data) if keys and _kind(keys) is not None]
        # parents that hold raw samples: their summaries ("gap" beside "gaps") are not drawn again
        with_samples = {keys[:-1] for keys, value in nodes if _is_numbers(value)}
        with_samples |= {keys[:-2] for keys, value in nodes if _is_numbers(value) and not keys[-2].startswith("[")}
        for keys, value in nodes:
            kind = _kind(keys)
            assert kind is not None
            unit, factor = _scale_of(keys)
            label = "/".join(p.strip("[]") for p in keys)
            if _is_numbers(value):
                groups[kind].append(Series(source, label, [v * factor for v in value], unit=unit))
                found += 1
            elif isinstance(value, dict) and isinstance(value.get("p50"), NUMBER):
                if keys[:-1] in with_samples:
                    continue
                p99 = value.get("p99") if isinstance(value.get("p99"), NUMBER) else value["p50"]
                groups[kind].append(Series(source, label, p50=value["p50"] * factor, p99=p99 * factor, unit=unit))
                found += 1
            elif value is None and isinstance(keys[-1], str) and keys[-1].endswith("_s"):
                groups[kind].append(Series(source, label, unit=unit, timed_out=True))
                found += 1
        # chaos: leaderless time per fault, by kind of fault
        for keys, value, _ in _walk(data):
            if keys and keys[-1] == "faults" and isinstance(value, list):
                by_kind: dict[str, list[float]] = {}
                for fault in value:
                    if isinstance(fault, dict) and isinstance(fault.get("leaderless"), NUMBER):
                        by_kind.setdefault(str(fault.get("kind", "?")), []).append(fault["leaderless"] * 1000.0)
                for fault_kind, samples in sorted(by_kind.items()):
                    label = "/".join(p.strip("[]") for p in keys[:-1] + (fault_kind,))
                    groups["gaps"].append(Series(source, label, samples))
                    found += 1
        if not found and isinstance(data, dict) and isinstance(data.get("peers"), list):
            used.append(f"{path.name}: peers (drawn in peers.png)")
            continue
        if not found and path.name == "standby.json":
            used.append(f"{path.name}: idle standbys (drawn in standby.png)")
            continue
        (used if found else skipped).append(
            f"{path.name}: {found} distributions" if found else f"{path.name}: nothing to draw"
        )
    # drop the chaos per-fault "leaderless" values found by the generic walk (drawn by kind)
    groups["gaps"] = [s for s in groups["gaps"] if not s.label.endswith("leaderless")]
    return groups, used, skipped


# --- drawing -----------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(text: str, width: int = 64) -> str:
    """Shorten in the middle: the source and the measure's own name both matter."""
    if len(text) <= width:
        return text
    keep = (width - 1) // 2
    return text[:keep] + "…" + text[-(width - 1 - keep) :]


def draw_distributions(series: list[Series], title: str, xlabel: str, out: Path, log: bool = True) -> bool:
    """One row per series: box + points for raw samples, p50 dot and p99 bar for summaries."""
    if not series:
        return False
    plt = _plt()
    rows = list(reversed(series))
    height = max(2.5, 0.32 * len(rows) + 1.4)
    fig, ax = plt.subplots(figsize=(10, height))
    positives = [v for s in rows for v in (s.samples or [s.p50, s.p99]) if isinstance(v, NUMBER) and v > 0]
    floor = min(positives) / 2 if positives else 0.1
    top = max(positives) * 2 if positives else 1.0
    for y, s in enumerate(rows):
        if s.samples:
            values = [max(v, floor) for v in s.samples]
            ax.boxplot(values, positions=[y], vert=False, widths=0.6, showfliers=False, manage_ticks=False)
            offsets = [y + 0.18 * math.sin(i * 2.399) for i in range(len(values))]
            ax.scatter(values, offsets, s=6, alpha=0.45, color="tab:blue", zorder=3)
        elif s.timed_out:
            ax.annotate("timed out", (top / 2, y), va="center", ha="right", fontsize=8, color="tab:red")
        elif s.p50 is not None:
            p50, p99 = max(s.p50, floor), max(s.p99 or s.p50, floor)
            ax.plot([p50, p99], [y, y], color="tab:orange", linewidth=3, solid_capstyle="butt")
            ax.plot([p50], [y], "o", color="tab:red", markersize=5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(s.name) for s in rows], fontsize=8)
    if log and positives and top / floor > 20:
        ax.set_xscale("log")
    ax.set_xlim(floor, top)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.text(
        0.01,
        0.005,
        "box + dots: raw samples (box = quartiles, whiskers 1.5 IQR); red dot to orange bar end: p50 to p99 (summary only)",
        fontsize=7,
        color="0.35",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def draw_peers(results: Path, out: Path) -> bool:
    """Takeover of each tool (Redis peers, Kubernetes peers), grouped by profile and signal."""
    rows: list[tuple[str, dict[str, Any] | None, float | None, list[float]]] = []
    for name in ("redis", "peers_kubernetes"):
        path = results / f"{name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for peer in data.get("peers", []) if isinstance(data.get("peers"), list) else []:
            if not isinstance(peer, dict):
                continue
            label = f"{name}: {peer.get('tool', '?')} ({peer.get('profile', '?')}, {peer.get('signal', peer.get('kind', '?'))})"
            stats = next((peer[k] for k in ("takeover_s", "handover_s", "gap_s") if k in peer), None)
            raw = peer.get("takeover_samples_s")
            samples = [float(v) for v in raw] if _is_numbers(raw) else []
            rows.append((label, stats if isinstance(stats, dict) else None, peer.get("cap_s"), samples))
    if not rows:
        return False
    plt = _plt()
    rows.reverse()
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.34 * len(rows) + 1.4)))
    for y, (label, stats, cap, samples) in enumerate(rows):
        if samples:
            ax.scatter(samples, [y] * len(samples), s=10, color="black", zorder=4, marker="x", linewidths=0.8)
        if stats is None:
            ax.barh(y, cap or 30.0, color="0.85", hatch="//", edgecolor="0.6")
            ax.annotate("no takeover within the cap", (0.02, y), va="center", fontsize=7)
            continue
        p50, p99 = stats.get("p50"), stats.get("p99")
        color = "tab:green" if label.split(": ", 1)[1].startswith("celery-leader") else "tab:blue"
        ax.barh(y, p50, color=color, alpha=0.8)
        if isinstance(p99, NUMBER):
            ax.plot([p50, p99], [y, y], color="black", linewidth=1)
            ax.plot([p99], [y], "|", color="black", markersize=8)
        end = max(p50, p99) if isinstance(p99, NUMBER) else p50
        ax.annotate(f"p50 {p50:.2f} s", (end, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(r[0], 64) for r in rows], fontsize=8)
    ax.set_xlabel("seconds from the leader's SIGKILL/SIGTERM to the next leader (bar p50, whisker to p99, x: runs)")
    ax.set_title("Takeover by tool, at its defaults and at settings matched to ours", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def draw_scale(results: Path, out: Path) -> bool:
    path = results / "scale.json"
    if not path.exists():
        return False
    data = json.loads(path.read_text())
    many = [r for r in data.get("many", []) if r.get("renew_late_samples_s")]
    contention = data.get("contention") or {}
    if not many and not contention.get("handover_samples_s"):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for r in many:
        values = sorted(max(v * 1000.0, 0.01) for v in r["renew_late_samples_s"])
        ys = [(i + 1) / len(values) for i in range(len(values))]
        timing = r.get("timing") or [None, None, None]
        retry = f"retry {timing[2]:g} s, " if isinstance(timing[2], NUMBER) else ""
        mode = "batched" if r.get("batched") else ("one by one" if "batched" in r else f"pool {r.get('executor_threads', '?')} threads")
        freeze = ", gc.freeze()" if r.get("gc_freeze") else ""
        label = f"{r['elections']} elections, {retry}{mode}{freeze}"
        ax.plot(values, ys, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("renewal sent late by (ms, log)")
    ax.set_ylabel("fraction of renewals")
    ax.set_title("Renew lateness, one process, one Redis backend (asyncio)", fontsize=10)
    ax.axvline(2000, color="0.5", linestyle=":", linewidth=1)
    ax.annotate("2 s (default retry_period)", (2000, 0.05), rotation=90, fontsize=7, color="0.4")
    ax.axvline(100, color="tab:red", linestyle="--", linewidth=1)
    ax.annotate("100 ms (issue 21 target, p99)", (100, 0.05), rotation=90, fontsize=7, color="tab:red")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[1]
    samples = [v * 1000.0 for v in contention.get("handover_samples_s", [])]
    if samples:
        ax.hist(samples, bins=min(30, max(5, len(samples) // 2)), color="tab:green", alpha=0.8)
        ax.set_xlabel("step_down() to the next on_started_leading (ms)")
        ax.set_ylabel("handovers")
        ax.set_title(f"{contention.get('candidates', '?')} candidates for one election (threads)", fontsize=10)
        ax.grid(alpha=0.3)
    else:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def draw_standby(results: Path, out: Path) -> bool:
    """One bar per backend and driver: an idle standby's CPU (``python -m benchmarks standby``)."""
    path = results / "standby.json"
    if not path.exists():
        return False
    data = json.loads(path.read_text())
    runs = [r for r in data.get("runs", []) if isinstance(r.get("cpu_pct"), NUMBER)]
    if not runs:
        return False
    backends = list(dict.fromkeys(r["backend"] for r in runs))
    drivers = list(dict.fromkeys(r["driver"] for r in runs))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(1, len(drivers))
    for d, driver in enumerate(drivers):
        xs, ys = [], []
        for b, backend in enumerate(backends):
            row = next((r for r in runs if r["backend"] == backend and r["driver"] == driver), None)
            if row is not None:
                xs.append(b + (d - (len(drivers) - 1) / 2) * width)
                ys.append(row["cpu_pct"])
        ax.bar(xs, ys, width=width, label=f"{driver} driver")
    ax.axhline(0.1, color="tab:red", linestyle="--", linewidth=1)
    ax.annotate("0.1 % (issue 21 target)", (len(backends) - 0.5, 0.1), ha="right", va="bottom", fontsize=8,
                color="tab:red")  # fmt: skip
    ax.set_xticks(range(len(backends)))
    ax.set_xticklabels(backends, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of one core")
    machine = data.get("machine") or {}
    ax.set_title(f"An idle standby at the default timing (15/10/2 s), {machine.get('when', '')}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks plots", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    missing = peer_missing("the plots (matplotlib)", "matplotlib")
    if missing:
        print(missing)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    groups, used, skipped = collect(args.results)
    drawn: list[str] = []
    handover = [s for s in groups["handover"] if s.unit == "ms"]
    if draw_distributions(
        handover, "Graceful handover: release/stop to the next leader", "milliseconds (log)", args.out / "handover.png"
    ):
        drawn.append(f"handover.png ({len(handover)} rows)")
    takeover = [s for s in groups["takeover"] if s.unit == "ms"]
    if draw_distributions(
        takeover, "Crash takeover: leader killed to the next leader", "milliseconds (log)", args.out / "takeover.png"
    ):
        drawn.append(f"takeover.png ({len(takeover)} rows)")
    over = [s for s in groups["takeover"] + groups["handover"] if s.unit == "lease"]
    if draw_distributions(
        over,
        "Crash takeover in units of lease_duration",
        "takeover / lease_duration",
        args.out / "takeover-over-lease.png",
        log=False,
    ):
        drawn.append(f"takeover-over-lease.png ({len(over)} rows)")
    if draw_distributions(
        groups["gaps"], "Time without a leader after a fault or failover", "milliseconds (log)", args.out / "gaps.png"
    ):
        drawn.append(f"gaps.png ({len(groups['gaps'])} rows)")
    if draw_peers(args.results, args.out / "peers.png"):
        drawn.append("peers.png")
    if draw_scale(args.results, args.out / "scale.png"):
        drawn.append("scale.png")
    if draw_standby(args.results, args.out / "standby.png"):
        drawn.append("standby.png")
    print("read:    " + ("; ".join(used) or "nothing"))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    print(f"drew in {args.out}: " + (", ".join(drawn) or "nothing"))
    return 0
