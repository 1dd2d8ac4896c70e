"""The paper table over two teacher instances: the same config and seeds run on two machines.

The from-scratch teacher and the student bases are trained on the machine that runs the sweep, and
two CPUs' floating point makes them different models (the same data: the coverage ceiling is equal).
Each instance is 5 blocks (seed s: one base checkpoint and batch order for every arm), so the two
together are 10 blocks: an arm's Δ against the baseline is paired over them. Also printed: how far
each arm moved between instances (Welch over seeds), whether an arm's gain over the baseline
differs between them (Welch on the per-block differences), and RTD against every other arm.

    python experiments/paper_table/instances.py [A report.json] [B report.json]

Writes experiments/paper_table/instances.{json,md} beside the committed reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rtd_lab.stats import compare, mean_ci, welch

HERE = Path(__file__).parent
BASELINE = "standard_kd"
METRICS = {"chain_acc": "all depths", "chain_acc/depth_4+": "depth ≥ 4"}
# Instance A's report labels its two RTD arms by their coherence weight; B ran the sweep file's tuned
# arm only. A's paper-weights arm has no counterpart in B and is left out.
ALIASES = {"rtd[method.w_coherence=1.5]": "rtd"}
ARMS = ["standard_kd", "fitnets", "cot_ft", "step_reward", "rtd"]
FOCUS = "rtd"  # the method the paper is about, against every other arm


def per_block(report: Path, label: str) -> dict[str, dict[str, dict[str, float]]]:
    """arm → metric → {block: value}, block = "<label><seed>"."""
    out: dict = {}
    for name, arm in json.loads(report.read_text())["chain_acc"].items():
        name = ALIASES.get(name, name)
        if name not in ARMS:
            continue
        out[name] = {
            m: {f"{label}{s}": v for s, v in zip(arm["seeds"], arm[m]["per_seed"], strict=True)} for m in METRICS
        }
    return out


def fmt_ci(values) -> str:
    m, h = mean_ci(list(values))
    return f"{m:.3f} ± {h:.3f}"


def main(a_path: Path, b_path: Path) -> dict:
    a, b = per_block(a_path, "A"), per_block(b_path, "B")
    result: dict = {"instances": {"A": str(a_path), "B": str(b_path)}, "baseline": BASELINE, "arms": {}}
    lines = []
    for metric, label in METRICS.items():
        lines += [
            f"\n**Chain accuracy, {label}** (mean ± 95 % CI over seeds; Δ paired over the 10 blocks):\n",
            "| arm | instance A | instance B | B − A (Welch p) | both (10 blocks) | Δ vs KD, both [95 % CI] "
            "| p (paired t) | MDE | Δ vs KD: A / B (p, differ) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in ARMS:
            va, vb = a[arm][metric], b[arm][metric]
            both = {**va, **vb}
            shift = welch(list(vb.values()), list(va.values()))
            row = {"A": va, "B": vb, "B_minus_A": shift["delta"], "B_minus_A_p": shift["p"]}
            cells = [fmt_ci(va.values()), fmt_ci(vb.values()), f"{shift['delta']:+.3f} ({shift['p']:.2g})"]
            cells.append(fmt_ci(both.values()))
            if arm == BASELINE:
                cells += ["–", "", "", ""]
            else:
                base = {**a[BASELINE][metric], **b[BASELINE][metric]}
                c = compare(both, base)
                da = [va[k] - a[BASELINE][metric][k] for k in va]
                db = [vb[k] - b[BASELINE][metric][k] for k in vb]
                differ = welch(db, da)
                row |= {
                    "delta_both": c.delta,
                    "ci": c.ci95,
                    "p_t": c.p_t,
                    "p_permutation": c.p_permutation,
                    "mde": c.mde80,
                }
                row |= {"delta_A": sum(da) / len(da), "delta_B": sum(db) / len(db), "delta_differ_p": differ["p"]}
                cells += [
                    f"{c.delta:+.3f} [{c.ci95[0]:+.3f}, {c.ci95[1]:+.3f}]",
                    f"{c.p_t:.2g}",
                    f"{c.mde80:.3f}",
                    f"{row['delta_A']:+.3f} / {row['delta_B']:+.3f} ({differ['p']:.2g})",
                ]
            result["arms"].setdefault(arm, {})[metric] = row
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        f"\n**{FOCUS} against every arm, both instances** (paired over the 10 blocks):\n",
        "| comparison | metric | Δ [95 % CI] | p (paired t) | p (permutation) | MDE |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm == FOCUS:
            continue
        for metric, label in METRICS.items():
            c = compare({**a[FOCUS][metric], **b[FOCUS][metric]}, {**a[arm][metric], **b[arm][metric]})
            result.setdefault("focus", {}).setdefault(arm, {})[metric] = c.asdict()
            lines.append(
                f"| {FOCUS} − {arm} | {label} | {c.delta:+.3f} [{c.ci95[0]:+.3f}, {c.ci95[1]:+.3f}] | "
                f"{c.p_t:.2g} | {c.p_permutation:.2g} | {c.mde80:.3f} |"
            )
    text = "# The paper table over two teacher instances\n" + "\n".join(lines) + "\n"
    (HERE / "instances.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "instances.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    args = [Path(p) for p in sys.argv[1:3]]
    main(*(args + [HERE / "report.json", HERE / "rerun" / "report.json"][len(args) :]))
