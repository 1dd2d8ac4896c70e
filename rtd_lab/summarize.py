"""Chain accuracy by depth, mean over seeds, for every run name (method or ablation) under some directories.

    python -m rtd_lab.summarize [--metric=chain_acc] multirun/2026-11-22/03-29-04 [more dirs ...]

prints the mean-over-seeds depth table, then one row per run with the metric of every seed.

Reads every ``results.json`` below the given directories. A first, plain summary; the full
report (confidence intervals, paired tests, plots, W&B) is ``task=report``'s job.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev


def load_results(dirs: list[str | Path]) -> list[dict]:
    runs = []
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            runs.append(json.loads(path.read_text()))
    return runs


def depth_table(depths: list[int], columns: dict[str, dict[str, float]], metric: str = "chain_acc") -> str:
    """Markdown table: one row per depth plus an overall row, one column per model."""
    names = list(columns)
    lines = ["| depth | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in [(f"{metric}/depth_{d}", str(d)) for d in depths] + [(metric, "all")]:
        lines.append(f"| {label} | " + " | ".join(f"{columns[n].get(key, float('nan')):.3f}" for n in names) + " |")
    return "\n".join(lines)


def summarize(runs: list[dict], metric: str = "chain_acc") -> str:
    if not runs:
        raise ValueError("no results.json found under the given directories")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_method[r.get("run", r["method"])].append(r["student"]["metrics"])  # ablations share a method
    # The teacher is the same for every run of a sweep: report it once, averaged like the rest.
    groups = {"teacher (n=1)": [r["teacher"]["metrics"] for r in runs]}
    groups |= {f"{name} (n={len(ms)})": ms for name, ms in by_method.items()}
    columns = {name: {k: mean(m[k] for m in ms) for k in ms[0]} for name, ms in groups.items()}
    return depth_table(runs[0]["depths"], columns, metric)


def per_seed_table(runs: list[dict], metric: str = "chain_acc") -> str:
    """Markdown table: one row per run name, ``metric`` (all depths) for each seed, then mean and std."""
    if not runs:
        raise ValueError("no results.json found under the given directories")
    seeds = sorted({r["seed"] for r in runs})
    by_run: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        by_run[r.get("run", r["method"])][r["seed"]] = r["student"]["metrics"][metric]
    lines = [
        "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for name, values in by_run.items():
        cells = [f"{values[s]:.3f}" if s in values else "missing" for s in seeds]
        v = list(values.values())
        sd = stdev(v) if len(v) > 1 else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean(v):.3f} | {sd:.3f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    metric = "chain_acc"
    if argv[0].startswith("--metric="):
        metric, argv = argv[0].split("=", 1)[1], argv[1:]
    runs = load_results(argv)
    print(summarize(runs, metric))
    print()
    print(per_seed_table(runs, metric))


if __name__ == "__main__":
    main(sys.argv[1:])
