"""The teacher robustness table: test chain accuracy per depth for each teacher seed x batch-order family.

    python -m rtd_lab -m task=teacher teacher.train.seed=0,1,2 teacher.train.order_family=0,1
    python experiments/calibration/teachers.py multirun/<date>/<time>

Reads every job's ``teacher_results.json`` (written by ``task=teacher``) and prints one markdown row
per teacher: seed, order family, the step its validation chain accuracy reached the target, steps
trained (until learned + the decay), chain accuracy by depth.
The bar of the calibration study: >= 0.99 at every depth for every row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(sweep_dir: Path) -> list[str]:
    out = []
    for path in sorted(sweep_dir.glob("*/teacher_results.json")):
        r = json.loads(path.read_text())
        train = r["config"]["teacher"]["train"]
        m, depths = r["teacher"]["metrics"], r["depths"]
        accs = [m[f"chain_acc/depth_{d}"] for d in depths]
        ok = "yes" if min(accs) >= 0.99 else "**no**"
        cells = " | ".join(f"{a:.3f}" for a in accs)
        out.append(
            f"| {train['seed']} | {train['order_family']} | {r['teacher'].get('decay_start', '?')} | "
            f"{r['teacher'].get('steps', '?')} | {cells} | "
            f"{m['chain_acc']:.3f} | {ok} |"
        )
    return out


def main() -> None:
    sweep = Path(sys.argv[1])
    first = json.loads(next(sweep.glob("*/teacher_results.json")).read_text())
    depths = first["depths"]
    head = " | ".join(f"depth {d}" for d in depths)
    print(f"| teacher seed | order family | learned at step | steps | {head} | all | >= 0.99 everywhere |")
    print("|---|---|---|---|" + "---|" * len(depths) + "---|---|")
    print("\n".join(rows(sweep)))


if __name__ == "__main__":
    main()
