"""``task=report``: a sweep's finished runs → the paper-shaped table, statistics over seeds and plots.

    python -m rtd_lab task=report report.sweep_dir=multirun/2026-11-24/22-00-29
    python -m rtd_lab task=report 'report.sweep_dir=[multirun/a,multirun/b]'   # seeds from two sweeps

Reads every job of the sweep(s) (``results.json`` and ``predictions_student.jsonl``) and writes into
the (first) sweep directory (``report.out_dir`` to change it):

- ``report.md`` / ``report.json``. Runs are grouped into **arms** by their whole config minus the
  seed (and what only names or places a run), so two settings of one method in one sweep are two
  arms, labelled with what differs (``rtd[method.w_align=0.1]``). For every arm and metric: the
  per-seed values (``chain_acc[<arm>][<metric>]["per_seed"]``, aligned with
  ``chain_acc[<arm>]["seeds"]``), mean, SD and 95 % Student-t CI. Against the baseline arm
  (``report.baseline``): Δ of means with its 95 % CI, a t-test over seeds (paired by seed when both
  arms ran the same seeds — a blocked design: the seed fixes the student's base checkpoint, its
  initialisation and batch order — else Welch's), the exact permutation test of the same design
  when each arm has <= 8 seeds, the smallest p that permutation test could reach at that n, and the
  minimum detectable effect at 80 % power (``rtd_lab.stats``). A bootstrap over test questions is
  given only as test-set uncertainty, labelled so: it is not evidence that two methods differ.
  Arms with fewer than 5 seeds are flagged as pilots. Diagnostics: CKA by step, transition AUROC,
  step/chain gap, self-consistency, int8 and how much of each method's gain survives it;
- ``chain_acc_by_depth.png``, ``cka_by_step.png``, ``chain_acc_bars.png``;
- the same tables and images as one W&B run (group = the sweep's group, job_type = report).

A job that started but wrote no readable ``results.json`` (killed, crashed, truncated) and a job
the sweep defines but never started are both listed as missing; nothing is silently left out.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import yaml

from rtd_lab.quantize import BITS as QUANT_BITS
from rtd_lab.results import depth_table
from rtd_lab.stats import compare, mean_ci, question_bootstrap_ci
from rtd_lab.utils import flatten

log = logging.getLogger(__name__)
PILOT_SEEDS = 5  # fewer seeds per arm than this is a pilot
# Config entries that name, place or display a run, or that cannot change what it learns: runs that
# differ only in these (and the seed) are seeds of one arm.
NOT_ARM_KEYS = {
    "seed", "run_name", "group", "tags", "task", "ckpt_path", "retain_freed_memory", "parallel_builds",
    "trainer.default_root_dir", "trainer.enable_progress_bar", "teacher_cache.verify", "sample.out_dir",
}  # fmt: skip
NOT_ARM_PREFIX = ("paths.", "logger.", "callbacks.", "hydra.", "report.", "diagnostics.")


# ---- reading a sweep ----------------------------------------------------------------------------
def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else []


def expected_jobs(sweep_dir: Path) -> list[dict[str, str]] | None:
    """The parameter combinations the sweep defines (from multirun.yaml), or None if unknown."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    params = {k: str(v) for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()}
    for o in (hydra.get("overrides") or {}).get("task", []):
        key, _, value = o.partition("=")
        if key in params or ("," in value and not value.startswith(("[", "{"))):
            params[key] = value
    keys = list(params)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(params[k].split(",") for k in keys))]


def _read_job(job: Path, runs: list[dict], missing: list[str]) -> None:
    results = job / "results.json"
    if not results.exists():
        missing.append(f"{job}: started, no results.json (killed or failed; see its *.log)")
        return
    try:
        r = json.loads(results.read_text())
        r["student"]["metrics"]["chain_acc"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:  # truncated, corrupt, or not ours
        missing.append(f"{job}: results.json unreadable ({type(e).__name__}: {e}), skipped")
        return
    preds = job / "predictions_student.jsonl"
    try:
        r["_questions"] = (
            {x["uid"]: float(x["chain_correct"]) for x in map(json.loads, preds.read_text().splitlines())}
            if preds.exists()
            else {}
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        log.warning("report: %s is unreadable; no test-set interval for this run", preds)
        r["_questions"] = {}
    r["_dir"] = str(job)
    runs.append(r)


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").exists()), key=_job_order)


def job_overrides(sweep_dir: Path) -> list[list[str]]:
    """The command-line overrides of every job folder of a sweep (none for a single run's folder)."""
    return [] if (sweep_dir / ".hydra").exists() else [_overrides(job) for job in _jobs(sweep_dir)]


def read_sweep(sweep_dir: Path, seen_elsewhere: list[list[str]] = ()) -> tuple[list[dict], list[str]]:
    """(finished runs with their per-question predictions, names of missing/failed/unreadable jobs).

    ``sweep_dir`` is a multirun folder (its job folders hold ``.hydra/``) or a single run's folder. A
    job the sweep defines counts as never started unless a job folder here or in ``seen_elsewhere``
    (the other sweeps of one report: a sweep finished in parts) ran its parameters.
    """
    runs: list[dict] = []
    missing: list[str] = []
    if (sweep_dir / "results.json").exists() or (sweep_dir / ".hydra").exists():
        _read_job(sweep_dir, runs, missing)
        return runs, missing
    seen = []
    for job in _jobs(sweep_dir):
        seen.append(_overrides(job))
        _read_job(job, runs, missing)
    expected = expected_jobs(sweep_dir)
    if expected:
        for combo in expected:
            wanted = {f"{k}={v}" for k, v in combo.items()}
            if not any(wanted <= set(o) for o in [*seen, *seen_elsewhere]):
                missing.append(f"{sweep_dir}: never started: " + " ".join(sorted(wanted)))
    return runs, missing


def _job_order(job: Path) -> tuple:
    head = job.name.split("_", 1)[0]
    return (int(head), job.name) if head.isdigit() else (1 << 30, job.name)


# ---- arms ---------------------------------------------------------------------------------------
def _seed_followers(runs: list[dict]) -> set[str]:
    """Config entries that are the run's seed under another name (``data.seed: ${seed}``): a ``*seed``
    entry equal to its run's seed in every run that has it. A constant such as ``data.benchmark.seed: 0``
    is not one as soon as a run of another seed is in the sweep, so it never splits seed 0 off."""
    values: dict[str, list[bool]] = defaultdict(list)
    for r in runs:
        for k, v in flatten(r.get("config") or {}).items():
            if k.rsplit(".", 1)[-1].endswith("seed"):
                values[k].append(v == r.get("seed"))
    return {k for k, same in values.items() if all(same)}


def _arm_config(run: dict, followers: set[str] = frozenset()) -> dict:
    """A run's flattened config without what only names, places or displays it, and without its seed
    (``followers``: the entries that are the seed under another name)."""
    flat = flatten(run.get("config") or {})
    return {
        k: v
        for k, v in flat.items()
        if k not in NOT_ARM_KEYS and not k.startswith(NOT_ARM_PREFIX) and k not in followers
    }


def group_arms(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by their config minus the seed; each arm labelled by its run name, plus the config
    entries that set it apart from the other arms of the same run name (``rtd[method.w_align=0.1]``)."""
    groups: dict[str, list[dict]] = {}
    configs: dict[str, dict] = {}
    followers = _seed_followers(runs)
    for r in runs:
        cfg = _arm_config(r, followers)
        key = json.dumps([r.get("run", r["method"]), cfg], sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
        configs[key] = cfg
    by_name: dict[str, list[str]] = defaultdict(list)
    for key, rs in groups.items():
        by_name[rs[0].get("run", rs[0]["method"])].append(key)
    arms: dict[str, list[dict]] = {}
    for name, keys in by_name.items():
        labels = _arm_labels(name, [configs[key] for key in keys])
        for key, label in zip(keys, labels, strict=True):
            arms[label] = sorted(groups[key], key=lambda r: r["seed"])
    return arms


def _arm_labels(name: str, configs: list[dict]) -> list[str]:
    """``name[k=v, ...]`` for each of the configs of one run name, with the entries that set them apart.

    Shown first: only the entries every config has (runs of an older rtd_lab lack settings added
    since, and a class path that moved is not a setting), when those alone tell the arms apart;
    otherwise every entry that differs."""
    if len(configs) == 1:
        return [name]
    union = set().union(*configs)
    first = configs[0]
    differing = sorted(k for k in union if any(c.get(k, k) != first.get(k, k) for c in configs))
    shared = [k for k in differing if all(k in c for c in configs) and not k.endswith("_target_")]
    for keys in (shared, differing):
        labels = [name + "[" + ", ".join(f"{k}={c.get(k)}" for k in keys) + "]" for c in configs]
        if keys and len(set(labels)) == len(labels):
            return labels
    return labels


def _with_deep(metrics: dict[str, float], depths: list[int]) -> dict[str, float]:
    """``metrics`` plus the paper's "four steps and above" aggregate, where the depths straddle 4."""
    m = dict(metrics)
    deep = [m[f"chain_acc/depth_{d}"] for d in depths if d >= 4 and f"chain_acc/depth_{d}" in m]
    if deep and min(depths) < 4:
        m["chain_acc/depth_4+"] = float(np.mean(deep))  # equal test questions per depth
    return m


def _metrics(run: dict, depths: list[int]) -> dict[str, float]:
    """The student metrics a report compares: chain accuracy by depth, depth >= 4, val AULC."""
    m = _with_deep(run["student"]["metrics"], depths)
    curve = run["student"].get("learning_curve")
    if curve and curve.get("aulc") is not None:
        m["val_aulc"] = curve["aulc"]
    if curve and curve.get("chain_acc"):
        m["val_chain_acc"] = curve["chain_acc"][-1]  # the last validation check: at the end of training
    for bits in QUANT_BITS:  # the student with its weights quantised after training (diagnostics)
        q = ((run.get("diagnostics") or {}).get("quantized") or {}).get(f"{bits}bit", {}).get("metrics")
        if q:
            m[f"int{bits}_chain_acc"] = q["chain_acc"]
            deep = _with_deep(q, depths).get("chain_acc/depth_4+")
            if deep is not None:
                m[f"int{bits}_chain_acc/depth_4+"] = deep
    return m


def compared_metrics(depths: list[int]) -> list[str]:
    keys = ["chain_acc"] + [f"chain_acc/depth_{d}" for d in depths]
    deep = max(depths) >= 4 and min(depths) < 4
    quantized = [f"int{b}_chain_acc{suffix}" for b in QUANT_BITS for suffix in ("", "/depth_4+")[: 1 + deep]]
    return keys + (["chain_acc/depth_4+"] if deep else []) + ["val_aulc", "val_chain_acc"] + quantized


# ---- the report ---------------------------------------------------------------------------------
def build_report(
    runs: list[dict],
    missing: list[str],
    baseline: str = "standard_kd",
    n_bootstrap: int = 10_000,
    within: list[str] | None = None,
    select_by: str | None = None,
):
    """The report as a dict (tables as nested dicts) — written as JSON, rendered as markdown.

    ``within``: config prefixes (e.g. ``["student"]``) that make blocks of arms — each arm is then
    compared with the baseline arm of its own block (the same values under those prefixes), e.g.
    RTD against standard KD at each student size, instead of with one baseline for all.

    ``select_by``: a metric of the validation split (``val_chain_acc``) by which to pick the best arm —
    a grid search done as the RTD paper did its own, on held-out data; its test numbers are then read
    from the tables as any arm's."""
    if not runs:
        raise ValueError("report: no finished run (no results.json) in the sweep; missing: " + "; ".join(missing))
    depths = runs[0]["depths"]
    arms = group_arms(runs)
    keys = compared_metrics(depths)
    table, values = {}, {}
    for name, rs in arms.items():
        seeds = [r["seed"] for r in rs]
        row: dict = {"run": rs[0].get("run", rs[0]["method"]), "method": rs[0]["method"], "seeds": seeds, "n": len(rs)}
        row["dirs"] = [r.get("_dir") for r in rs]
        curves = [r["student"].get("learning_curve") or {} for r in rs]
        row["converged"] = [curve.get("converged") for curve in curves]  # per seed; None: no curve recorded
        row["steps_trained"] = [(curve.get("steps") or [None])[-1] for curve in curves]  # differs on a plateau schedule
        values[name] = {}
        for k in keys + ["answer_acc", "step_acc"]:
            per_seed = [_metrics(r, depths).get(k) for r in rs]
            if any(v is None for v in per_seed):
                continue
            m, h = mean_ci(per_seed)
            sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
            row[k] = {"mean": m, "ci95": h, "sd": sd, "per_seed": per_seed}
            values[name][k] = dict(zip(seeds, per_seed, strict=True))
        table[name] = row
    dup = [n for n, row in table.items() if len(row["seeds"]) != len(set(row["seeds"]))]
    if dup:
        raise ValueError(f"report: arms {dup} hold two runs of one seed with one config (the same sweep read twice?)")
    teacher = {
        k: mean(r["teacher"]["metrics"].get(k, float("nan")) for r in runs) for k in keys if k.startswith("chain")
    }
    warnings = [
        f"{name}: {row['n']} seed{'s' if row['n'] != 1 else ''} — a pilot (fewer than {PILOT_SEEDS} seeds per arm)"
        for name, row in table.items()
        if row["n"] < PILOT_SEEDS
    ]
    bases = _baseline_arms(arms, baseline, within)
    comparison = {}
    for name, rs in arms.items():
        base = bases.get(name)
        if base is None or name == base:
            continue
        comparison[name] = {"baseline_arm": base}
        for k in keys:
            if k not in values[name] or k not in values[base]:
                continue
            c = compare(values[name][k], values[base][k])
            comparison[name][k] = c.asdict() if c else None
        common = sorted(set.intersection(*(set(r["_questions"]) for r in rs + arms[base])))
        if common:
            a = [[r["_questions"][u] for u in common] for r in rs]
            b = [[r["_questions"][u] for u in common] for r in arms[base]]
            comparison[name]["test_set"] = question_bootstrap_ci(a, b, n_bootstrap)
    named = sorted(set(bases.values()))
    selection = None
    if select_by:
        if not select_by.startswith("val_"):
            raise ValueError(f"report.select_by must be a validation metric (val_...), got {select_by!r}")
        ranked = sorted(
            ((name, row[select_by]["mean"]) for name, row in table.items() if select_by in row),
            key=lambda item: -item[1],
        )
        if not ranked:
            raise ValueError(f"report.select_by={select_by}: no run recorded it")
        selection = {"by": select_by, "arm": ranked[0][0], "ranking": [list(item) for item in ranked]}
    return {
        "depths": depths,
        "baseline": None if not named else baseline if within else named[0],  # the one arm, or the blocks' name
        "within": list(within) if within else None,
        "baseline_arms": bases,
        "teacher": teacher,
        # A sweep whose blocks each train their own teacher reports the teachers' mean; say how many.
        "teacher_instances": teacher_instances(runs),
        "chain_acc": table,
        "vs_baseline": comparison,
        "selection": selection,
        "warnings": warnings,
        "diagnostics": _diagnostics(arms, bases, comparison),
        "missing": missing,
    }


def _block(run: dict, within: list[str], followers: set[str]) -> str:
    """The arm config entries of ``run`` under the ``within`` prefixes (the seed and what follows it,
    such as ``student.base.seed``, left out), as a hashable key."""
    flat = _arm_config(run, followers)
    picked = {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in within)}
    return json.dumps(picked, sort_keys=True, default=str)


def _baseline_arms(arms: dict[str, list[dict]], baseline: str, within: list[str] | None) -> dict[str, str]:
    """Each arm's baseline arm: the one ``baseline`` names, or with ``within``, the one of its block."""
    if not within:
        base = _baseline_arm(arms, baseline)
        return {name: base for name in arms} if base is not None else {}
    blocks: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    followers = _seed_followers([r for rs in arms.values() for r in rs])
    for name, rs in arms.items():
        blocks[_block(rs[0], within, followers)][name] = rs
    bases = {}
    for members in blocks.values():
        base = _baseline_arm(members, baseline)
        if base is None:
            base = _baseline_arm(members, baseline.split("[", 1)[0])  # a label of the whole sweep's arms
        for name in members:
            if base is not None:
                bases[name] = base
    return bases


def _baseline_arm(arms: dict[str, list[dict]], baseline: str) -> str | None:
    if baseline in arms:
        return baseline
    named = [a for a, rs in arms.items() if rs[0].get("run") == baseline or rs[0]["method"] == baseline]
    if len(named) > 1:
        raise ValueError(f"report.baseline={baseline} matches several arms {named}: name one of them")
    return named[0] if named else None


def _diagnostics(arms: dict[str, list[dict]], bases: dict[str, str], comparison: dict) -> dict:
    out = {}
    for name, rs in arms.items():
        ds = [r["diagnostics"] for r in rs if r.get("diagnostics")]
        if not ds:
            continue
        steps = sorted({int(k) for d in ds for k in d.get("cka", {})})
        row: dict = {"cka": {s: mean(d["cka"][str(s)] for d in ds if str(s) in d.get("cka", {})) for s in steps}}
        aurocs = [d["transition_auroc"] for d in ds if d.get("transition_auroc") is not None]
        row["transition_auroc"] = mean(aurocs) if aurocs else None
        row["step_chain_gap"] = mean(d["step_chain_gap"]["all"] for d in ds)
        sc = [d["self_consistency"]["answer_acc"] for d in ds if "self_consistency" in d]
        row["self_consistency_answer_acc"] = mean(sc) if sc else None
        row["greedy_answer_acc"] = mean(r["student"]["metrics"]["answer_acc"] for r in rs)
        row["fp32_chain_acc"] = mean(r["student"]["metrics"]["chain_acc"] for r in rs)
        depth_keys = [k for k in rs[0]["student"]["metrics"] if k.startswith("chain_acc/depth_")]
        row["fp32_chain_acc_by_depth"] = {k: mean(r["student"]["metrics"][k] for r in rs) for k in depth_keys}
        for bits in QUANT_BITS:
            qs = [
                d["quantized"][f"{bits}bit"]["metrics"]
                for d in ds
                if "metrics" in d.get("quantized", {}).get(f"{bits}bit", {})
            ]
            row[f"int{bits}_chain_acc"] = mean(q["chain_acc"] for q in qs) if qs else None
            row[f"int{bits}_chain_acc_by_depth"] = {k: mean(q[k] for q in qs) for k in depth_keys} if qs else None
        out[name] = row
    for name, row in out.items():  # how much of a method's gain over the baseline survives quantisation
        base = out.get(bases.get(name)) if bases.get(name) else None
        gain = row["fp32_chain_acc"] - base["fp32_chain_acc"] if base else 0.0
        # A share of a gain the seeds cannot tell from zero would be noise over noise: only for a real one,
        # and only for a gain (a share of a loss reads backwards: 5x of a loss "kept").
        test = (comparison.get(name) or {}).get("chain_acc")
        real = test is not None and test["ci95"][0] > 0
        for bits in QUANT_BITS:
            q, q_base = row[f"int{bits}_chain_acc"], base and base[f"int{bits}_chain_acc"]
            kept = real and q is not None and q_base is not None and abs(gain) > 1e-9
            row[f"int{bits}_gain_kept"] = (q - q_base) / gain if kept else None
    return out


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x) -> str:
    return "–" if x is None else ("< 0.0001" if x < 1e-4 else f"{x:.4f}")


METRIC_LABELS = {
    "chain_acc": "chain acc, all depths",
    "chain_acc/depth_4+": "chain acc, depth >= 4",
    "val_aulc": "val AULC",
    "int4_chain_acc": "4-bit chain acc, all depths",
    "int4_chain_acc/depth_4+": "4-bit chain acc, depth >= 4",
}


def _converged_cell(flags: list | None) -> str:
    """Runs whose validation curve had flattened (``learning_curve``), as "k/n" of those that recorded one."""
    known = [f for f in flags or [] if f is not None]
    return f"{sum(known)}/{len(known)}" if known else "–"


def report_markdown(rep: dict, sweep_dir: str) -> str:
    arms = rep["chain_acc"]
    names = list(arms)
    depths = rep["depths"]
    lines = [f"# Report: {sweep_dir}", ""]
    if rep["missing"]:
        lines += [f"**Missing, failed or unreadable jobs ({len(rep['missing'])})** — not in any table below:", ""]
        lines += [f"- {m}" for m in rep["missing"]] + [""]
    if rep["warnings"]:
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in rep["warnings"]] + [""]
    lines += [
        "Chain accuracy by depth, mean ± 95 % CI over seeds (Student-t); n = seeds per arm:",
        "",
        f"| depth | {_teacher_header(rep)} | " + " | ".join(f"{n} (n={arms[n]['n']})" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    rows = [(str(d), f"chain_acc/depth_{d}") for d in depths] + [("all", "chain_acc")]
    if "chain_acc/depth_4+" in rep["teacher"] or any("chain_acc/depth_4+" in arms[n] for n in names):
        rows.append(("≥ 4", "chain_acc/depth_4+"))
    for label, key in rows:
        cells = [
            f"{_fmt(arms[n][key]['mean'])} ± {_fmt(arms[n][key]['ci95'])}" if key in arms[n] else "–" for n in names
        ]
        lines.append(f"| {label} | {_fmt(rep['teacher'].get(key))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed (chain accuracy, all depths), SD over seeds, and the validation learning curve's area "
        "(val AULC: mean validation chain accuracy over the checks of training — sample efficiency, not the "
        "converged accuracy), how many runs had converged (on a plateau schedule: the plateau test, not the "
        "step cap, ended the run's stable phase; else its last validation checks within the plateau "
        "tolerance of `callbacks.learning_curve`) and the steps each trained:",
        "",
        "| arm | seeds | per seed | mean | SD | val AULC | converged | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        ca = arms[n]["chain_acc"]
        aulc = arms[n].get("val_aulc")
        aulc_cell = f"{_fmt(aulc['mean'])} ± {_fmt(aulc['ci95'])}" if aulc else "–"
        lines.append(
            f"| {n} | {', '.join(map(str, arms[n]['seeds']))} | {' / '.join(_fmt(v) for v in ca['per_seed'])} | "
            f"{_fmt(ca['mean'])} | {_fmt(ca['sd'])} | {aulc_cell} | {_converged_cell(arms[n].get('converged'))} | "
            f"{' / '.join('–' if t is None else str(t) for t in arms[n].get('steps_trained') or [])} |"
        )
    lines += selection_table(rep)
    within = rep.get("within")
    if rep["baseline"]:
        against = (
            f"Against **{rep['baseline']}** of the same {' / '.join(within)} settings (each arm's baseline arm after "
            "its name)"
            if within
            else f"Against **{rep['baseline']}**"
        )
        lines += [
            "",
            f"{against}, over seeds: Δ = mean(arm) − mean(baseline) with its 95 % CI; the t-test "
            "(paired by seed when both arms ran the same seeds — the seed fixes the student's base checkpoint, "
            "initialisation and batch order — else Welch's); the exact permutation test of the same design "
            "(its smallest attainable p at this n in brackets); the minimum detectable effect (MDE) at 80 % power "
            "and α = 0.05 for the spread observed:",
            "",
            "| arm | metric | design | Δ [95 % CI] | p (t) | p (exact permutation) [min] | MDE | p (Welch) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        shown = ["chain_acc", "chain_acc/depth_4+", "val_aulc", "int4_chain_acc", "int4_chain_acc/depth_4+"]
        for n, cs in rep["vs_baseline"].items():
            for k in shown:
                c = cs.get(k)
                if not c:
                    continue
                perm = (
                    f"{_p(c['p_permutation'])} [{_fmt(c['min_p_permutation'], 4)}]" if c["permutation_exact"] else "–"
                )
                label = f"{n} − {cs['baseline_arm']}" if within else n
                lines.append(
                    f"| {label} | {METRIC_LABELS.get(k, k)} | {c['design']} | {c['delta']:+.3f} "
                    f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | {_p(c['p_t'])} | {perm} | {_fmt(c['mde80'])} | "
                    f"{_p(c['p_welch'])} |"
                )
        lines += delta_by_depth_table(rep)
        tests = {n: cs["test_set"] for n, cs in rep["vs_baseline"].items() if cs.get("test_set")}
        if tests:
            lines += [
                "",
                "Test-set uncertainty only (not a test of the methods): the 95 % bootstrap interval of Δ chain "
                "accuracy over test questions, each question's correctness averaged over seeds — how far Δ could "
                "move on another test set of this size for these trained students:",
                "",
                "| arm | Δ chain acc | 95 % interval over questions | questions |",
                "|---|---|---|---|",
            ]
            for n, t in tests.items():
                lines.append(f"| {n} | {t['delta']:+.3f} | [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}] | {t['questions']} |")
    if rep["diagnostics"]:
        steps = sorted({s for row in rep["diagnostics"].values() for s in row["cka"]})
        lines += [
            "",
            "Diagnostics (mean over seeds): linear CKA of student vs teacher boundary states by step index, "
            "on the deepest test chains (one chain length: pooling lengths inflates CKA); transition-cosine "
            "AUROC; step − chain accuracy; self-consistency vs greedy answer accuracy; int8 and 4-bit chain "
            "accuracy (weights quantised after training) and the share of the gain over the baseline that survives "
            "(only for a gain whose 95 % CI over seeds is above 0):",
            "",
            "| arm | "
            + " | ".join(f"CKA step {s}" for s in steps)
            + " | AUROC | step−chain | SC answer acc | greedy answer acc | int8 chain acc | int8 gain kept "
            "| 4-bit chain acc | 4-bit gain kept |",
            "|---|" + "---|" * (len(steps) + 8),
        ]
        for n, row in rep["diagnostics"].items():
            lines.append(
                f"| {n} | "
                + " | ".join(_fmt(row["cka"].get(s)) for s in steps)
                + f" | {_fmt(row['transition_auroc'])} | {_fmt(row['step_chain_gap'])} | "
                f"{_fmt(row['self_consistency_answer_acc'])} | {_fmt(row['greedy_answer_acc'])} | "
                f"{_fmt(row['int8_chain_acc'])} | {_fmt(row['int8_gain_kept'], 2)} | "
                f"{_fmt(row.get('int4_chain_acc'))} | {_fmt(row.get('int4_gain_kept'), 2)} |"
            )
        lines += quantization_table(rep["diagnostics"])
    return "\n".join(lines) + "\n"


def selection_table(rep: dict) -> list[str]:
    """The arms ranked by the validation metric that selects one (``report.select_by``), with their test
    chain accuracy beside it (read after the choice, not used for it)."""
    sel = rep.get("selection")
    if not sel:
        return []
    arms = rep["chain_acc"]
    lines = [
        "",
        f"Selected on the validation split by **{sel['by']}** (mean over seeds): **{sel['arm']}**. All arms, best "
        "first, with their test chain accuracy (not used to choose):",
        "",
        f"| rank | arm | {sel['by']} | SD | test chain acc ± 95 % CI |",
        "|---|---|---|---|---|",
    ]
    for rank, (name, value) in enumerate(sel["ranking"], 1):
        v, ca = arms[name][sel["by"]], arms[name]["chain_acc"]
        lines.append(f"| {rank} | {name} | {_fmt(value)} | {_fmt(v['sd'])} | {_fmt(ca['mean'])} ± {_fmt(ca['ci95'])} |")
    return lines


def delta_by_depth_table(rep: dict) -> list[str]:
    """Δ chain accuracy against the baseline at every depth, with the seeds' 95 % CI."""
    keys = [f"chain_acc/depth_{d}" for d in rep["depths"]] + ["chain_acc"]
    rows = [(n, cs) for n, cs in rep["vs_baseline"].items() if any(cs.get(k) for k in keys)]
    if not rows:
        return []
    lines = [
        "",
        "Δ chain accuracy against the baseline by depth, over seeds (95 % CI; the design as above):",
        "",
        "| arm | " + " | ".join(f"depth {d}" for d in rep["depths"]) + " | all |",
        "|---|" + "---|" * len(keys),
    ]
    for n, cs in rows:
        cells = [
            f"{cs[k]['delta']:+.3f} [{cs[k]['ci95'][0]:+.3f}, {cs[k]['ci95'][1]:+.3f}]" if cs.get(k) else "–"
            for k in keys
        ]
        label = f"{n} − {cs['baseline_arm']}" if rep.get("within") else n
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def quantization_table(diagnostics: dict) -> list[str]:
    """Chain accuracy by depth at float32 / int8 / 4-bit weights, mean over seeds, per arm."""
    rows = [
        (n, row)
        for n, row in diagnostics.items()
        if row.get("int8_chain_acc_by_depth") or row.get("int4_chain_acc_by_depth")
    ]
    if not rows:
        return []
    keys = list(rows[0][1]["fp32_chain_acc_by_depth"])
    lines = [
        "",
        "Chain accuracy by depth with the weights quantised after training (rtd_lab.quantize; mean over seeds):",
        "",
        "| arm | weights | " + " | ".join(f"depth {k.rsplit('_', 1)[1]}" for k in keys) + " | all |",
        "|---|---|" + "---|" * (len(keys) + 1),
    ]
    for n, row in rows:
        for label, prefix in (("float32", "fp32"), ("int8", "int8"), ("4-bit", "int4")):
            by_depth = row.get(f"{prefix}_chain_acc_by_depth")
            if by_depth:
                cells = " | ".join(_fmt(by_depth.get(k)) for k in keys)
                lines.append(f"| {n} | {label} | {cells} | {_fmt(row[f'{prefix}_chain_acc'])} |")
    return lines


def figures(rep: dict) -> dict:
    """The report's three plots as matplotlib figures, by file stem (the notebook shows them inline)."""
    import matplotlib.pyplot as plt

    figs = {}
    depths = rep["depths"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in rep["chain_acc"].items():
        m = np.array([row[f"chain_acc/depth_{d}"]["mean"] for d in depths])
        h = np.nan_to_num(np.array([row[f"chain_acc/depth_{d}"]["ci95"] for d in depths]))
        ax.plot(depths, m, marker="o", label=name)
        ax.fill_between(depths, np.clip(m - h, 0, 1), np.clip(m + h, 0, 1), alpha=0.15)
    ax.set(xlabel="reasoning depth (steps)", ylabel="chain accuracy", ylim=(-0.02, 1.02), title="Chain accuracy")
    ax.legend(fontsize=7)
    figs["chain_acc_by_depth"] = fig

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in rep["diagnostics"].items():
        cka = {int(k): v for k, v in row["cka"].items()}  # int keys, or str after a JSON round trip
        if cka:
            ax.plot(sorted(cka), [cka[k] for k in sorted(cka)], marker="o", label=name)
    ax.set(xlabel="step index", ylabel="linear CKA (student vs teacher)", title="Coherence drift")
    if ax.get_lines():
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no run has CKA diagnostics", ha="center", transform=ax.transAxes)
    figs["cka_by_step"] = fig

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rep["chain_acc"])
    means = [rep["chain_acc"][n]["chain_acc"]["mean"] for n in names]
    errs = [np.nan_to_num(rep["chain_acc"][n]["chain_acc"]["ci95"]) for n in names]
    ax.bar(range(len(names)), means, yerr=errs, capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="chain accuracy, all depths", ylim=(0, 1.05), title="Runs (mean ± 95 % CI)")
    figs["chain_acc_bars"] = fig
    return figs


def plot_report(rep: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    return [_save(fig, out / f"{stem}.png") for stem, fig in figures(rep).items()]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)  # atomic: a reader never sees half an image
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def log_to_wandb(rep: dict, markdown: str, images: list[Path], group: str, out: Path, where: dict) -> str | None:
    """One W&B run holding the report (job_type=report, same group as the sweep's runs), in the
    project / entity / mode of ``where`` (the config's logger)."""
    import wandb

    run = wandb.init(group=group, job_type="report", name=f"report_{group}", dir=str(out), **where)
    names = list(rep["chain_acc"])
    table = wandb.Table(columns=["depth", *names])
    for d, key in [(str(d), f"chain_acc/depth_{d}") for d in rep["depths"]] + [("all", "chain_acc")]:
        table.add_data(d, *[rep["chain_acc"][n][key]["mean"] for n in names])
    run.log({"report/chain_acc": table, "report/markdown": wandb.Html(f"<pre>{markdown}</pre>")})
    run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in images})
    path = run.dir
    run.finish()
    return path


# ---- the quick summary (report.summary_only): any folders of results.json, no statistics -------------
def load_results(dirs: list[str | Path]) -> list[dict]:
    runs = []
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            runs.append(json.loads(path.read_text()))
    return runs


def teacher_instances(runs: list[dict]) -> int:
    """How many distinct teachers the runs used (by their cache key)."""
    return len({json.dumps(r["teacher"].get("key"), sort_keys=True) for r in runs})


def _teacher_header(rep: dict) -> str:
    k = rep.get("teacher_instances", 1)
    return "teacher" if k <= 1 else f"teachers (mean of {k})"


def summarize(runs: list[dict], metric: str = "chain_acc") -> str:
    if not runs:
        raise ValueError("no results.json found under the given directories")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_method[r.get("run", r["method"])].append(r["student"]["metrics"])  # ablations share a method
    # Report the teacher once, averaged over the runs (a sweep may give each seed its own teacher).
    groups = {f"teacher (n={teacher_instances(runs)})": [r["teacher"]["metrics"] for r in runs]}
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
