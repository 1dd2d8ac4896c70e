"""``task=report``: the one reporting path.

    python -m rtd_lab task=report report.sweep_dir=multirun/<date>/<time>            # table, statistics, plots
    python -m rtd_lab task=report 'report.sweep_dir=[multirun/a,multirun/b]'         # seeds from two sweeps
    python -m rtd_lab task=report report.sweep_dir=runs report.summary_only=true     # plain depth tables
    python -m rtd_lab task=report report.sweep_dir=... report.recompute_cka=true     # CKA from checkpoints first
    python -m rtd_lab task=report report.sweep_dir=... report.recompute_quantized=true   # int8 / 4-bit, likewise

What the report holds: ``rtd_lab.report``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.diagnostics import boundary_cka, quantized_metrics
from rtd_lab.evaluation import Evaluator
from rtd_lab.methods.base import student_state
from rtd_lab.models.provision import prepare_student, prepare_teacher
from rtd_lab.report import (
    build_report,
    job_overrides,
    load_results,
    log_to_wandb,
    per_seed_table,
    plot_report,
    read_sweep,
    report_markdown,
    summarize,
)
from rtd_lab.tasks.settings import build_context, student_settings, teacher_settings
from rtd_lab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def recompute(job: Path, cka: bool, quantize: list[int]) -> dict:
    """Recompute diagnostics of a finished run from its checkpoint (and the cached teacher) and update
    its results.json: for runs made before a diagnostic existed or changed. ``cka``: the boundary-state
    CKA; ``quantize``: the student evaluated with its weights quantised to these bit widths."""
    results = json.loads((job / "results.json").read_text())
    cfg = OmegaConf.create(results["config"])
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)  # a run's config of any version has it
    ctx = build_context(cfg)
    teacher, tokenizer, _ = prepare_teacher(teacher_settings(cfg.teacher), ctx, benchmark)
    student = prepare_student(student_settings(cfg.student), ctx, tokenizer, teacher, cfg.seed)
    state = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    student.load_state_dict(student_state(state))
    student.eval()
    bs = cfg.data.eval_batch_size
    test = ReasoningDataModule.gold(benchmark, tokenizer, bs, bs).test_dataloader()
    new: dict = {}
    if cka:
        layer = cfg.method.get("student_layer", -1)
        new |= boundary_cka(student, teacher.model, test, layer, teacher.layer, torch.device("cpu"))
    if quantize:
        evaluator = Evaluator(tokenizer, benchmark)
        new["quantized"] = {f"{bits}bit": quantized_metrics(student, evaluator, test, bits) for bits in quantize}
    results["diagnostics"] = {**(results.get("diagnostics") or {}), **new}
    atomic_write_json(job / "results.json", results)
    return new


def run_report(cfg: DictConfig) -> dict:
    """``task=report``: the report of ``report.sweep_dir`` (one folder or a list)."""
    r = cfg.report
    if not r.get("sweep_dir"):
        raise ValueError(
            "report.sweep_dir is not set: python -m rtd_lab task=report report.sweep_dir=multirun/<date>/<time>"
        )
    given = list(r.sweep_dir) if isinstance(r.sweep_dir, list | ListConfig) else [r.sweep_dir]
    within = r.get("within")
    within = [within] if isinstance(within, str) else list(within) if isinstance(within, list | ListConfig) else within
    if within is not None and not (
        isinstance(within, list) and within and all(isinstance(w, str) and w for w in within)
    ):
        raise ValueError(f"report.within must be null, a config prefix or a list of them, got {r.get('within')!r}")
    select_by = r.get("select_by")
    if select_by is not None and not (isinstance(select_by, str) and select_by.startswith("val_")):
        raise ValueError(f"report.select_by must be null or a validation metric (val_chain_acc), got {select_by!r}")
    sweeps = [Path(hydra.utils.to_absolute_path(str(d))) for d in given]
    for sweep in sweeps:
        if not sweep.is_dir():
            raise FileNotFoundError(f"report.sweep_dir: {sweep} is not a directory")
    quantize = list(cfg.diagnostics.quantize) if r.get("recompute_quantized") else []
    if r.recompute_cka or quantize:
        for sweep in sweeps:
            for results in sorted(sweep.rglob("results.json")):
                if (results.parent / "checkpoints" / "last.ckpt").exists():
                    new = recompute(results.parent, r.recompute_cka, quantize)
                    if "cka" in new:
                        log.info("%s: CKA %s", results.parent, {k: round(v, 3) for k, v in new["cka"].items()})
                    for scheme, q in new.get("quantized", {}).items():
                        log.info("%s: %s chain accuracy %.3f", results.parent, scheme, q["metrics"]["chain_acc"])
    if r.summary_only:  # the plain mean-over-seeds tables of any folders of runs: no statistics, plots or W&B
        runs = load_results(sweeps)
        text = f"{summarize(runs, r.metric)}\n\n{per_seed_table(runs, r.metric)}"
        print(text)
        return {"summary": text}
    out = Path(hydra.utils.to_absolute_path(r.out_dir)) if r.out_dir else sweeps[0]
    out.mkdir(parents=True, exist_ok=True)
    runs, missing = [], []
    ran = {sweep: job_overrides(sweep) for sweep in sweeps}
    for sweep in sweeps:
        found, lost = read_sweep(sweep, [o for other in sweeps if other != sweep for o in ran[other]])
        runs += found
        missing += lost
    rep = build_report(runs, missing, r.baseline, r.n_bootstrap, within, r.get("select_by"))
    markdown = report_markdown(rep, ", ".join(map(str, given)))
    images = plot_report(rep, out)
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", markdown)
    print(markdown)
    for m in missing:
        log.warning("report: missing job: %s", m)
    for w in rep["warnings"]:
        log.warning("report: %s", w)
    if r.wandb:
        group = runs[0]["config"].get("group", "default")
        logger = cfg.get("logger") or {}
        where = {
            "project": logger.get("project") or "rtd_lab",
            "entity": logger.get("entity"),
            "mode": "offline" if logger.get("offline", True) else "online",
        }
        rep["wandb_dir"] = log_to_wandb(rep, markdown, images, group, out, where)
    return rep
