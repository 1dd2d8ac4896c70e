"""``task=report``: a sweep's finished runs → the paper-shaped table, statistics and plots.

    python -m rtd_lab task=report report.sweep_dir=multirun/2026-11-24/22-00-29

Reads every job of the sweep (``results.json`` and ``predictions_student.jsonl``), and writes into
the sweep directory (``report.out_dir`` to change it):

- ``report.md`` / ``report.json``: chain accuracy by depth for each run (mean ± 95 % CI over seeds,
  Student-t), the change against the baseline (``report.baseline``, standard KD) and a **paired
  bootstrap p-value** over test questions (per question, chain correctness averaged over seeds;
  questions resampled ``report.n_bootstrap`` times; two-sided, H0: no difference); the diagnostics
  (CKA by step, transition AUROC, step/chain gap, self-consistency, int8 and how much of each
  method's gain over the baseline survives it); and every **missing or failed** job, by name;
- ``chain_acc_by_depth.png``, ``cka_by_step.png``, ``chain_acc_bars.png``;
- the same tables and images as one W&B run (group = the sweep's group, job_type = report),
  offline unless W&B is configured otherwise, so a dashboard shows them next to the runs.

A job that started but wrote no ``results.json`` (killed, crashed) and a job the sweep defines but
never started are both listed as missing; nothing is silently left out.
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

from rtd_lab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


# ---- statistics ---------------------------------------------------------------------------------
def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval); half-width nan for one value."""
    from scipy import stats

    m = mean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * stdev(values) / math.sqrt(len(values))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Two runs' per-question scores, a (seeds_a, Q) and b (seeds_b, Q), over the same Q questions.

    ``p_questions``: the paired bootstrap over questions (Koehn 2004; Berg-Kirkpatrick et al. 2012):
    each question's score averaged over seeds, the paired differences resampled with replacement;
    p = share of resampled means at least as far from the observed mean as it is from 0 (the
    bootstrap distribution shifted to H0), two-sided. It asks whether *these trained students*
    differ on other questions like these. ``p_questions_and_seeds`` also resamples each run's seeds
    in every round, so it asks whether *the methods* differ — what matters when students are
    bimodal across seeds, as ours are.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    d = a.mean(0) - b.mean(0)
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    q = rng.integers(0, d.size, size=(n, d.size))
    p_q = float(np.mean(np.abs(d[q].mean(axis=1) - observed) >= abs(observed) - 1e-12))
    means = np.empty(n)
    for i in range(n):
        sa, sb = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        means[i] = (a[sa].mean(0) - b[sb].mean(0))[q[i]].mean()
    p_qs = float(np.mean(np.abs(means - observed) >= abs(observed) - 1e-12))
    return {"delta": observed, "p_questions": p_q, "p_questions_and_seeds": p_qs}


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


def read_sweep(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """(finished runs with their per-question predictions, names of missing/failed jobs)."""
    runs, missing, seen = [], [], []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").exists()), key=_job_order):
        overrides = _overrides(job)
        seen.append(overrides)
        results = job / "results.json"
        if not results.exists():
            missing.append(f"{job.name}: started, no results.json (killed or failed; see {job.name}/*.log)")
            continue
        r = json.loads(results.read_text())
        preds = job / "predictions_student.jsonl"
        r["_questions"] = (
            {x["uid"]: float(x["chain_correct"]) for x in map(json.loads, preds.read_text().splitlines())}
            if preds.exists()
            else {}
        )
        runs.append(r)
    expected = expected_jobs(sweep_dir)
    if expected:
        for combo in expected:
            wanted = {f"{k}={v}" for k, v in combo.items()}
            if not any(wanted <= set(o) for o in seen):
                missing.append("never started: " + " ".join(sorted(wanted)))
    return runs, missing


def _job_order(job: Path) -> tuple:
    head = job.name.split("_", 1)[0]
    return (int(head), job.name) if head.isdigit() else (1 << 30, job.name)


# ---- the report ---------------------------------------------------------------------------------
def build_report(runs: list[dict], missing: list[str], baseline: str = "standard_kd", n_bootstrap: int = 10_000):
    """The report as a dict (tables as nested dicts) — written as JSON, rendered as markdown."""
    if not runs:
        raise ValueError("report: no finished run (no results.json) in the sweep; missing: " + "; ".join(missing))
    depths = runs[0]["depths"]
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_run[r.get("run", r["method"])].append(r)
    keys = [f"chain_acc/depth_{d}" for d in depths] + ["chain_acc"]
    table = {}
    for name, rs in by_run.items():
        table[name] = {"seeds": sorted(r["seed"] for r in rs)}
        for k in keys:
            m, h = mean_ci([r["student"]["metrics"].get(k, float("nan")) for r in rs])
            table[name][k] = {"mean": m, "ci95": h}
    teacher = {k: mean(r["teacher"]["metrics"].get(k, float("nan")) for r in runs) for k in keys}
    comparison = {}
    if baseline in by_run:
        for name, rs in by_run.items():
            if name == baseline:
                continue
            common = sorted(set.intersection(*(set(r["_questions"]) for r in rs + by_run[baseline])))
            if not common:
                comparison[name] = {"delta": float("nan"), "questions": 0}
                continue
            a = [[r["_questions"][u] for u in common] for r in rs]
            b = [[r["_questions"][u] for u in common] for r in by_run[baseline]]
            comparison[name] = {**paired_bootstrap(a, b, n_bootstrap), "questions": len(common)}
    return {
        "depths": depths,
        "baseline": baseline if baseline in by_run else None,
        "teacher": teacher,
        "chain_acc": table,
        "vs_baseline": comparison,
        "diagnostics": _diagnostics(by_run, baseline),
        "missing": missing,
    }


def _diagnostics(by_run: dict[str, list[dict]], baseline: str) -> dict:
    out = {}
    for name, rs in by_run.items():
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
        q8 = [
            d["quantized"]["8bit"]["metrics"]["chain_acc"]
            for d in ds
            if "metrics" in d.get("quantized", {}).get("8bit", {})
        ]
        row["int8_chain_acc"] = mean(q8) if q8 else None
        row["fp32_chain_acc"] = mean(r["student"]["metrics"]["chain_acc"] for r in rs)
        out[name] = row
    base = out.get(baseline)
    for name, row in out.items():  # how much of a method's gain over the baseline survives int8
        row["int8_gain_kept"] = None
        if base and name != baseline and row["int8_chain_acc"] is not None and base["int8_chain_acc"] is not None:
            gain = row["fp32_chain_acc"] - base["fp32_chain_acc"]
            if abs(gain) > 1e-9:
                row["int8_gain_kept"] = (row["int8_chain_acc"] - base["int8_chain_acc"]) / gain
    return out


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report_markdown(rep: dict, sweep_dir: str) -> str:
    names = list(rep["chain_acc"])
    depths = rep["depths"]
    lines = [f"# Report: {sweep_dir}", ""]
    if rep["missing"]:
        lines += [f"**Missing or failed jobs ({len(rep['missing'])})** — not in any table below:", ""]
        lines += [f"- {m}" for m in rep["missing"]] + [""]
    lines += [
        "Chain accuracy by depth, mean ± 95 % CI over seeds (Student-t):",
        "",
        "| depth | teacher | " + " | ".join(f"{n} (n={len(rep['chain_acc'][n]['seeds'])})" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for d, key in [(str(d), f"chain_acc/depth_{d}") for d in depths] + [("all", "chain_acc")]:
        cells = [f"{_fmt(rep['chain_acc'][n][key]['mean'])} ± {_fmt(rep['chain_acc'][n][key]['ci95'])}" for n in names]
        lines.append(f"| {d} | {_fmt(rep['teacher'][key])} | " + " | ".join(cells) + " |")
    if rep["baseline"]:
        lines += [
            "",
            f"Against {rep['baseline']} (chain accuracy, all depths; paired bootstrap over test questions, "
            "each question's correctness averaged over seeds):",
            "",
            "| run | Δ chain acc | p, questions resampled | p, questions and seeds resampled | questions |",
            "|---|---|---|---|---|",
        ]
        for n, c in rep["vs_baseline"].items():
            lines.append(
                f"| {n} | {c['delta']:+.3f} | {_fmt(c.get('p_questions'), 4)} | "
                f"{_fmt(c.get('p_questions_and_seeds'), 4)} | {c['questions']} |"
            )
        lines += [
            "",
            "The first p asks whether these trained students differ on questions like these; the second also "
            "resamples seeds, so it asks whether the methods differ (see rtd_lab/report.py).",
        ]
    if rep["diagnostics"]:
        steps = sorted({s for row in rep["diagnostics"].values() for s in row["cka"]})
        lines += [
            "",
            "Diagnostics (mean over seeds): linear CKA of student vs teacher boundary states by step index, "
            "on the deepest test chains (one chain length: pooling lengths inflates CKA); transition-cosine "
            "AUROC; step − chain accuracy; self-consistency vs greedy answer accuracy; int8 chain accuracy and "
            "the share of the gain over the baseline that survives int8:",
            "",
            "| run | "
            + " | ".join(f"CKA step {s}" for s in steps)
            + " | AUROC | step−chain | SC answer acc | greedy answer acc | int8 chain acc | int8 gain kept |",
            "|---|" + "---|" * (len(steps) + 6),
        ]
        for n, row in rep["diagnostics"].items():
            lines.append(
                f"| {n} | "
                + " | ".join(_fmt(row["cka"].get(s)) for s in steps)
                + f" | {_fmt(row['transition_auroc'])} | {_fmt(row['step_chain_gap'])} | "
                f"{_fmt(row['self_consistency_answer_acc'])} | {_fmt(row['greedy_answer_acc'])} | "
                f"{_fmt(row['int8_chain_acc'])} | {_fmt(row['int8_gain_kept'], 2)} |"
            )
    return "\n".join(lines) + "\n"


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


def log_to_wandb(rep: dict, markdown: str, images: list[Path], group: str, out: Path) -> str | None:
    """One W&B run holding the report (job_type=report, same group as the sweep's runs)."""
    import wandb

    run = wandb.init(project="rtd_lab", group=group, job_type="report", name=f"report_{group}", dir=str(out))
    names = list(rep["chain_acc"])
    table = wandb.Table(columns=["depth", *names])
    for d, key in [(str(d), f"chain_acc/depth_{d}") for d in rep["depths"]] + [("all", "chain_acc")]:
        table.add_data(d, *[rep["chain_acc"][n][key]["mean"] for n in names])
    run.log({"report/chain_acc": table, "report/markdown": wandb.Html(f"<pre>{markdown}</pre>")})
    run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in images})
    path = run.dir
    run.finish()
    return path


def run_report(cfg) -> dict:
    import hydra

    r = cfg.report
    if not r.get("sweep_dir"):
        raise ValueError(
            "report.sweep_dir is not set: python -m rtd_lab task=report report.sweep_dir=multirun/<date>/<time>"
        )
    sweep = Path(hydra.utils.to_absolute_path(r.sweep_dir))
    if not sweep.is_dir():
        raise FileNotFoundError(f"report.sweep_dir: {sweep} is not a directory")
    out = Path(hydra.utils.to_absolute_path(r.out_dir)) if r.get("out_dir") else sweep
    out.mkdir(parents=True, exist_ok=True)
    runs, missing = read_sweep(sweep)
    rep = build_report(runs, missing, r.get("baseline", "standard_kd"), r.get("n_bootstrap", 10_000))
    markdown = report_markdown(rep, str(r.sweep_dir))
    images = plot_report(rep, out)
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", markdown)
    print(markdown)
    for m in missing:
        log.warning("report: missing job: %s", m)
    if r.get("wandb", True):
        group = runs[0]["config"].get("group", "default")
        rep["wandb_dir"] = log_to_wandb(rep, markdown, images, group, out)
    return rep
