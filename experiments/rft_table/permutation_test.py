"""Exact two-sided permutation test on a metric's mean over seeds, for every pair of runs.

    python experiments/rft_table/permutation_test.py [--metric=answer_acc] multirun/<date>/<time> [more dirs]

Unpaired (each seed is one sample of a run); every split of the pooled seeds is enumerated, so
use it for a handful of seeds only. Issue 5's report adds the paired bootstrap over test questions.
"""

from __future__ import annotations

import itertools
import sys
from statistics import mean

from rtd_lab.summarize import load_results


def permutation_p(a: list[float], b: list[float]) -> float:
    observed, pool = abs(mean(a) - mean(b)), a + b
    hits = total = 0
    for idx in itertools.combinations(range(len(pool)), len(a)):
        chosen = set(idx)
        x = [pool[i] for i in idx]
        y = [pool[i] for i in range(len(pool)) if i not in chosen]
        hits += abs(mean(x) - mean(y)) >= observed - 1e-12
        total += 1
    return hits / total


def main(argv: list[str]) -> None:
    metric = "chain_acc"
    if argv and argv[0].startswith("--metric="):
        metric, argv = argv[0].split("=", 1)[1], argv[1:]
    by_run: dict[str, list[float]] = {}
    for r in load_results(argv):
        by_run.setdefault(r["run"], []).append(r["student"]["metrics"][metric])
    print(f"{metric}, all depths:")
    print("| run A | run B | seeds | mean A - mean B | p (exact permutation) |")
    print("|---|---|---|---|---|")
    for a, b in itertools.combinations(sorted(by_run), 2):
        xs, ys = by_run[a], by_run[b]
        print(f"| {a} | {b} | {len(xs)} / {len(ys)} | {mean(xs) - mean(ys):+.3f} | {permutation_p(xs, ys):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
