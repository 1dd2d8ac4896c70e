"""Does a rerun reproduce a sweep's table? Two reports of the same sweep file, side by side.

The sweep file gives every block (seed) its own teacher, student base and batch order, so another
run of it — on another machine, whose floating point makes other teachers and bases from the same
config, or with other seeds — is a fresh draw of blocks. For every arm this prints each run's mean
± 95 % CI over seeds, whether the second run's mean lies inside the first run's CI (the check
"rerunning the README command reproduces its table within the stated CI") and inside the first
run's 95 % prediction interval for a rerun's mean (the CI is for the true mean; a rerun of 5 seeds
misses it one time in eight when nothing differs, the prediction interval one time in twenty), and
the Welch p that the two runs differ; then each arm against the baseline paired over the blocks of
both runs (the baseline's block s and the arm's block s share teacher, base and batch order),
whether that gain differs between runs, and the focus method against every other arm.

    python experiments/paper_table/reproduce.py                  # report.json vs rerun/report.json
    python experiments/paper_table/reproduce.py FIRST SECOND --labels A B --out history/instances_ab/instances
    # another sweep file: name its arms, its baseline and the metrics to compare
    python experiments/paper_table/reproduce.py experiments/ablations/history/seeds_0_4/report.json \
        experiments/ablations/report.json --title Ablations --baseline rtd --focus none \
        --arms rtd ablation_no_coherence ablation_no_alignment ablation_no_curriculum \
        --metrics chain_acc chain_acc/depth_4+ val_aulc --out experiments/ablations/reproduce

Writes <out>.json and <out>.md (default: experiments/paper_table/reproduce.{json,md}).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtd_lab.stats import compare, mean_ci, rerun_interval, welch

HERE = Path(__file__).parent
BASELINE = "standard_kd"
METRICS = ["chain_acc", "chain_acc/depth_4+"]
# How a metric's heading reads; a metric not named here reads as its key.
LABELS = {"chain_acc": "Chain accuracy, all depths", "chain_acc/depth_4+": "Chain accuracy, depth ≥ 4"}
LABELS |= {"val_aulc": "Validation AULC (sample efficiency)"}
SHORT = {"chain_acc": "all depths", "chain_acc/depth_4+": "depth ≥ 4", "val_aulc": "val AULC"}
# The first one-teacher measurement labelled its two RTD arms by their coherence weight; the tuned
# one is the sweep file's RTD arm (its paper-weights arm has no counterpart in later runs).
ALIASES = {"rtd[method.w_coherence=1.5]": "rtd"}
ARMS = ["standard_kd", "fitnets", "cot_ft", "step_reward", "rtd"]
FOCUS = "rtd"  # the method the paper is about, against every other arm


def per_block(report: Path, label: str, arms: list[str], metrics: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """arm → metric → {block: value}, block = "<label>:<seed>"."""
    out: dict = {}
    for name, arm in json.loads(report.read_text())["chain_acc"].items():
        name = ALIASES.get(name, name)
        if name not in arms:
            continue
        out[name] = {
            m: {f"{label}:{s}": v for s, v in zip(arm["seeds"], arm[m]["per_seed"], strict=True)} for m in metrics
        }
    missing = [a for a in arms if a not in out]
    if missing:
        raise SystemExit(f"{report}: no arm named {', '.join(missing)} (arms: {', '.join(sorted(out))})")
    return out


def fmt_ci(values) -> str:
    m, h = mean_ci(list(values))
    return f"{m:.3f} ± {h:.3f}"


def inside(values_second, values_first, predict: bool = False) -> bool:
    """Whether the second run's mean lies inside the first run's 95 % CI (or, with ``predict``, its
    prediction interval for a rerun of the second run's size)."""
    first, second = list(values_first), list(values_second)
    m1, h1 = rerun_interval(first, len(second)) if predict else mean_ci(first)
    return abs(sum(second) / len(second) - m1) <= h1


def main(
    first: Path,
    second: Path,
    labels: tuple[str, str],
    out: Path,
    *,
    title: str = "The paper table",
    arms: list[str] = ARMS,
    baseline: str = BASELINE,
    focus: str | None = FOCUS,
    metrics: list[str] = METRICS,
) -> dict:
    la, lb = labels
    if baseline not in arms or (focus is not None and focus not in arms):
        raise SystemExit(f"--baseline {baseline} and --focus {focus} must be among --arms {' '.join(arms)}")
    a, b = per_block(first, la, arms, metrics), per_block(second, lb, arms, metrics)
    n = len(a[baseline][metrics[0]]) + len(b[baseline][metrics[0]])
    result: dict = {"runs": {la: str(first), lb: str(second)}, "baseline": baseline, "arms": {}}
    lines = []
    for metric in metrics:
        lines += [
            f"\n**{LABELS.get(metric, metric)}** (mean ± 95 % CI over seeds; Δ paired over the {n} blocks):\n",
            f"| arm | {la} | {lb} | inside {la}'s CI / prediction interval | {lb} − {la} (Welch p) "
            f"| both ({n} blocks) | Δ vs {baseline}, both [95 % CI] | p (paired t) | MDE "
            f"| Δ vs {baseline}: {la} / {lb} (p, differ) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            va, vb = a[arm][metric], b[arm][metric]
            both = {**va, **vb}
            shift = welch(list(vb.values()), list(va.values()))
            ok = inside(vb.values(), va.values())
            ok_pi = inside(vb.values(), va.values(), predict=True)
            row = {la: va, lb: vb, "second_inside_first_ci": ok, "second_inside_first_prediction_interval": ok_pi}
            row |= {"shift": shift["delta"], "shift_p": shift["p"]}
            yes = {True: "yes", False: "**no**"}
            cells = [fmt_ci(va.values()), fmt_ci(vb.values()), f"{yes[ok]} / {yes[ok_pi]}"]
            cells += [f"{shift['delta']:+.3f} ({shift['p']:.2g})", fmt_ci(both.values())]
            if arm == baseline:
                cells += ["–", "", "", ""]
            else:
                base_a, base_b = a[baseline][metric], b[baseline][metric]
                c = compare(both, {**base_a, **base_b})
                da = [va[k] - base_a[k] for k in va]
                db = [vb[k] - base_b[k] for k in vb]
                differ = welch(db, da)
                row |= {"delta_both": c.delta, "ci": c.ci95, "p_t": c.p_t, "p_permutation": c.p_permutation}
                row |= {"mde": c.mde80, "delta_first": sum(da) / len(da), "delta_second": sum(db) / len(db)}
                row |= {"delta_differ_p": differ["p"]}
                cells += [
                    f"{c.delta:+.3f} [{c.ci95[0]:+.3f}, {c.ci95[1]:+.3f}]",
                    f"{c.p_t:.2g}",
                    f"{c.mde80:.3f}",
                    f"{row['delta_first']:+.3f} / {row['delta_second']:+.3f} ({differ['p']:.2g})",
                ]
            result["arms"].setdefault(arm, {})[metric] = row
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if focus is not None:
        lines += [
            f"\n**{focus} against every arm, both runs** (paired over the {n} blocks):\n",
            "| comparison | metric | Δ [95 % CI] | p (paired t) | p (permutation) | MDE |",
            "|---|---|---|---|---|---|",
        ]
    for arm in arms if focus is not None else []:
        if arm == focus:
            continue
        for metric in metrics:
            c = compare({**a[focus][metric], **b[focus][metric]}, {**a[arm][metric], **b[arm][metric]})
            result.setdefault("focus", {}).setdefault(arm, {})[metric] = c.asdict()
            lines.append(
                f"| {focus} − {arm} | {SHORT.get(metric, metric)} | {c.delta:+.3f} [{c.ci95[0]:+.3f}, "
                f"{c.ci95[1]:+.3f}] | {c.p_t:.2g} | {c.p_permutation:.2g} | {c.mde80:.3f} |"
            )
    text = f"# {title}, {la} and {lb}\n" + "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", nargs="?", type=Path, default=HERE / "report.json")
    p.add_argument("second", nargs="?", type=Path, default=HERE / "rerun" / "report.json")
    p.add_argument("--labels", nargs=2, default=["run", "rerun"], metavar=("FIRST", "SECOND"))
    p.add_argument("--out", type=Path, default=HERE / "reproduce", help="path without suffix")
    p.add_argument("--title", default="The paper table")
    p.add_argument("--arms", nargs="+", default=ARMS)
    p.add_argument("--baseline", default=BASELINE)
    p.add_argument("--focus", default=FOCUS, help="the arm compared with every other; 'none': no such table")
    p.add_argument("--metrics", nargs="+", default=METRICS, help="keys of the report's per-arm metrics")
    args = p.parse_args()
    focus = None if args.focus == "none" else args.focus
    main(
        args.first,
        args.second,
        tuple(args.labels),
        args.out,
        title=args.title,
        arms=args.arms,
        baseline=args.baseline,
        focus=focus,
        metrics=args.metrics,
    )
