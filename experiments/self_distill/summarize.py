"""The self-distillation loops of a sweep over seeds, side by side: per round and metric the per-seed
values, mean and 95 % CI, and the last round against the first, paired by seed (each seed is one loop:
its base checkpoint, batch order and samples).

    python experiments/self_distill/summarize.py <sweep dir> [out dir]    # reads <sweep dir>/*/self_distill.json
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

from rtd_lab.stats import compare, mean_ci
from rtd_lab.traces.self_distill import COLUMNS
from rtd_lab.utils import atomic_write_json, atomic_write_text


def main(sweep: Path, out: Path) -> None:
    loops = {}
    for path in sorted(sweep.glob("*/self_distill.json")):
        summary = json.loads(path.read_text())
        loops[summary["seed"]] = summary["rounds"]
    if not loops:
        raise SystemExit(f"no */self_distill.json under {sweep}")
    seeds = sorted(loops)
    n_rounds = min(len(r) for r in loops.values())
    depths = sorted(next(iter(loops.values()))[0]["by_depth"], key=int)
    metrics = [k for k, _ in COLUMNS] + [f"depth_{d}" for d in depths]

    def value(row, key):
        return row["by_depth"][key[6:]] if key.startswith("depth_") else row[key]

    table = {}
    for key in metrics:
        if value(loops[seeds[0]][0], key) is None:
            continue
        per_round = []
        for r in range(n_rounds):
            vals = {s: value(loops[s][r], key) for s in seeds}
            mean, half = mean_ci(list(vals.values()))
            per_round.append({"round": r + 1, "per_seed": [vals[s] for s in seeds], "mean": mean, "ci_half": half})
        last = {s: value(loops[s][n_rounds - 1], key) for s in seeds}
        first = {s: value(loops[s][0], key) for s in seeds}
        test = compare(last, first)
        table[key] = {"rounds": per_round, "last_vs_first": None if test is None else asdict(test)}
    report = {"sweep": str(sweep), "seeds": seeds, "rounds": n_rounds, "metrics": table}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    n = len(report["seeds"])
    lines = [
        f"Self-distillation, {n} seeds (one loop each), {report['rounds']} rounds; mean ± 95 % CI over seeds.",
        "" if n >= 5 else f"**Pilot: {n} seeds (fewer than 5).**",
        "",
        "| metric | "
        + " | ".join(f"round {r + 1}" for r in range(report["rounds"]))
        + " | last − first [95 % CI] | p, MDE |",
        "|---|" + "---|" * (report["rounds"] + 2),
    ]
    for key, m in report["metrics"].items():
        cells = [f"{x['mean']:.3f} ± {x['ci_half']:.3f}" for x in m["rounds"]]
        t = m["last_vs_first"]
        if t is None:
            diff, p = "–", "–"
        else:
            diff = f"{t['delta']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]"
            p = f"{t['p_t']:.2g} (paired t) / {t['p_permutation']:.2g} (exact perm.); MDE {t['mde80']:.3f}"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {diff} | {p} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sweep = Path(sys.argv[1])
    main(sweep, Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent)
