"""Inside and beyond the trained lengths: every pair of arms, paired by seed.

Each seed's chain accuracy averaged over depths 1-4 (the trained lengths) and 5-8 (beyond them), from
the per-seed values of a length-generalisation report.json; then ``rtd_lab.stats.compare`` for every
pair of arms (paired t, exact permutation, MDE).

    python experiments/length_generalisation/compare.py [report.json]
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from rtd_lab.stats import compare, mean_ci

RANGES = {"depths 1-4": range(1, 5), "depths 5-8": range(5, 9)}


def range_means(arm: dict, depths: range) -> dict[int, float]:
    per_depth = [arm[f"chain_acc/depth_{d}"]["per_seed"] for d in depths]
    return {s: sum(v[i] for v in per_depth) / len(per_depth) for i, s in enumerate(arm["seeds"])}


def main(path: Path) -> None:
    arms = json.loads(path.read_text())["chain_acc"]
    means = {name: {r: range_means(arm, d) for r, d in RANGES.items()} for name, arm in arms.items()}
    print("| arm | " + " | ".join(f"{r}: per seed / mean ± 95 % CI" for r in RANGES) + " |")
    print("|---|" + "---|" * len(RANGES))
    for name, by_range in means.items():
        cells = []
        for values in by_range.values():
            m, h = mean_ci(list(values.values()))
            cells.append(" / ".join(f"{v:.3f}" for v in values.values()) + f"; {m:.3f} ± {h:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| comparison | " + " | ".join(RANGES) + " |")
    print("|---|" + "---|" * len(RANGES))
    for a, b in itertools.combinations(means, 2):
        cells = []
        for r in RANGES:
            c = compare(means[a][r], means[b][r])
            cells.append(
                f"{c.delta:+.3f} [{c.ci95[0]:+.3f}, {c.ci95[1]:+.3f}], p = {c.p_t:.2g} / {c.p_permutation:.2g}, "
                f"MDE {c.mde80:.3f}"
            )
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "report.json")
