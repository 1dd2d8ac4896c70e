"""``task=train`` (the default): teacher (cached) → student distillation → evaluation → results.json.

A plain function: ``python -m rtd_lab`` calls it through Hydra, tests call it directly.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rtd_lab.curriculum import DepthCurriculum
from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.training_set import DataSettings, build_splits
from rtd_lab.diagnostics import DiagnosticsSettings, flat_diagnostics, run_diagnostics
from rtd_lab.evaluation import Evaluator
from rtd_lab.learning_curve import LearningCurve
from rtd_lab.methods.base import student_state
from rtd_lab.models.provision import prepare_student, prepare_teacher, student_base_beside, student_base_info
from rtd_lab.models.teacher import Teacher
from rtd_lab.results import depth_table, environment, train_set_stats
from rtd_lab.rundir import check_checkpoint, claim_run_dir
from rtd_lab.tasks.export import command_line, export_student
from rtd_lab.tasks.rft import rft_dataset
from rtd_lab.tasks.segment import boundary_classifier
from rtd_lab.tasks.settings import build_context, container, method_name, student_settings, teacher_settings
from rtd_lab.teacher_cache import CacheSpec, TeacherCache, TeacherCacheSettings, prepare_teacher_cache, teacher_identity
from rtd_lab.traces.segment import apply_learned_boundaries
from rtd_lab.traces.teacher import examples_from_dataset, teacher_traces
from rtd_lab.utils import atomic_write_json, atomic_write_jsonl, config_hash, flatten

log = logging.getLogger(__name__)


def quiet_duplicate_logs() -> None:
    # `import lightning` gives its logger a console handler of its own; under Hydra, whose root
    # handlers already print to the console and the run's log file, every line would show twice.
    if logging.getLogger().hasHandlers():
        for handler in list(logging.getLogger("lightning").handlers):
            logging.getLogger("lightning").removeHandler(handler)


@dataclass
class Prepared:
    """Everything a run builds before training: shared by ``train`` and ``task=cache``."""

    data: DataSettings
    datamodule: ReasoningDataModule
    teacher: Teacher
    tokenizer: Any
    teacher_info: dict
    module: Any
    method_name: str
    evaluator: Evaluator
    trace_report: Any
    segmenter_info: dict | None
    timings: dict
    student_base: dict | None = None  # the base checkpoint the student started from (student.base)


def training_traces(cfg: DictConfig, data: DataSettings, teacher: Teacher, tokenizer) -> tuple[list | None, Any]:
    """The training examples of ``data.trace_source`` (None for the benchmark's gold traces) and
    the report of how they were made."""
    source, benchmark = data.trace_source, data.benchmark
    if source == "gold":
        return None, None
    if source == "teacher":
        return teacher_traces(teacher.model, benchmark.splits()["train"], tokenizer, benchmark, data.eval_batch_size)
    if source == "rft":  # SAMPLE -> FILTER here (cached), then train on what survives
        return examples_from_dataset(str(rft_dataset(cfg)), benchmark)
    # a SAMPLE or FILTER output on disk: rejection-sampling fine-tuning (RFT) and friends
    return examples_from_dataset(source, benchmark)


def prepare(cfg: DictConfig, out_dir: Path | None = None) -> Prepared:
    """Teacher (cached), student, the training set (traces, subset, boundaries: one step), then
    the DataModule that batches it and the method."""
    timings: dict[str, float] = {}
    t0 = time.time()
    ctx = build_context(cfg)
    data: DataSettings = hydra.utils.instantiate(cfg.data)
    benchmark = data.benchmark
    t, s = teacher_settings(cfg.teacher), student_settings(cfg.student)
    beside = (
        student_base_beside(t, s, ctx, benchmark, cfg.retain_freed_memory) if cfg.parallel_builds else nullcontext()
    )
    with beside:
        teacher, tokenizer, teacher_info = prepare_teacher(t, ctx, benchmark)
    timings["teacher_ready"] = round(time.time() - t0, 1)

    L.seed_everything(cfg.seed, workers=True)
    student = prepare_student(s, ctx, tokenizer, teacher, cfg.seed)
    student_base = student_base_info(s, ctx, tokenizer)
    timings["student_ready"] = round(time.time() - t0, 1)
    if out_dir is not None and rank_zero_only.rank == 0:
        tokenizer.save_pretrained(out_dir / "tokenizer")

    t_traces = time.time()
    train_examples, trace_report = training_traces(cfg, data, teacher, tokenizer)
    if train_examples is not None:
        timings["teacher_traces"] = round(time.time() - t_traces, 1)
    splits = build_splits(data, tokenizer, train_examples)
    segmenter_info, segmenter = None, None
    # The RTD paper's boundary classifier on teacher hidden states. learned_online runs it on every
    # batch's teacher states; with an offline teacher cache its boundaries are computed once instead
    # (a function of the frozen teacher and the trace: the cache holds the states at them), as learned.
    # A method that segments text of its own (on-policy RTD: the student's samples) gets it whatever
    # the batches' boundaries are.
    online = data.boundaries == "learned_online" and cfg.teacher_cache.mode == "off"
    method_needs = getattr(hydra.utils.get_class(cfg.method["_target_"]), "needs_boundary_classifier", False)
    if data.boundaries in ("learned", "learned_online") or method_needs:
        segmenter, segmenter_info = boundary_classifier(cfg, ctx, splits, tokenizer.pad_token_id, teacher)
        if data.boundaries in ("learned", "learned_online") and not online:  # learned_online: with a cache
            splits = apply_learned_boundaries(splits, tokenizer.pad_token_id, teacher.model, segmenter)
    datamodule = ReasoningDataModule.from_settings(data, splits, tokenizer.pad_token_id)

    evaluator = Evaluator(tokenizer, benchmark)
    module = hydra.utils.instantiate(
        container(cfg.method),
        student=student,
        teacher=teacher,
        evaluator=evaluator,
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler),
    )
    if segmenter is not None:
        module.use_boundary_classifier(segmenter, on_batches=online)
    return Prepared(
        data,
        datamodule,
        teacher,
        tokenizer,
        teacher_info,
        module,
        method_name(cfg),
        evaluator,
        trace_report,
        segmenter_info,
        timings,
        student_base,
    )


def attach_teacher_cache(cfg: DictConfig, p: Prepared, force_build: bool = False) -> TeacherCache | None:
    """The offline teacher cache of this run's (teacher, training data, boundaries), per ``teacher_cache``."""
    settings = TeacherCacheSettings(**container(cfg.teacher_cache))
    if not p.module.needs_teacher or (settings.mode == "off" and not force_build):
        return None
    spec = CacheSpec(top_k=settings.top_k, layer=p.teacher.layer, dtype=settings.dtype, **p.module.cache_request())
    cache = prepare_teacher_cache(
        settings,
        p.teacher,
        p.datamodule.encoded["train"],
        spec,
        teacher_identity(p.teacher_info, p.teacher.model),
        build_context(cfg).cache_dir,
        batch_size=p.data.eval_batch_size,
        pad_id=p.tokenizer.pad_token_id,
        force_build=force_build,
    )
    p.module.teacher_cache = cache
    return cache


def make_logger(cfg: DictConfig, out_dir: Path):
    """The configured logger (or False).

    W&B: the run's id comes from the run directory, so a resumed or requeued run continues its W&B
    run instead of opening a new one. ``logger.offline`` decides the mode through ``wandb.init(mode=)``
    unless the user has set ``WANDB_MODE`` (then W&B reads it): Lightning's own ``offline=True``
    would set WANDB_MODE for the whole process, and every later run of a multirun would inherit it.
    """
    if not cfg.get("logger"):
        return False
    node = cfg.logger
    extra = {}
    if node.get("_target_", "").endswith("WandbLogger"):
        if node.get("id") is None:
            extra |= {"id": wandb_run_id(out_dir), "resume": "allow"}
        if "WANDB_MODE" not in os.environ:
            extra |= {"offline": False, "mode": "offline" if node.get("offline", True) else "online"}
    return hydra.utils.instantiate(node, **extra)


def wandb_run_id(out_dir: Path) -> str:
    """A W&B run id unique to the run directory (W&B ids: letters, digits, _ and -)."""
    return f"{out_dir.name[-40:]}-{config_hash(str(out_dir.resolve()), 8)}".replace("/", "_").replace(":", "_")


def log_to_wandb(logger: WandbLogger, records: list[dict], n_samples: int, exported: Path | None) -> None:
    """A table of sample test traces, and the exported student as a model artifact when
    ``logger.log_model`` is on."""
    if n_samples > 0 and records:
        columns = ["uid", "depth", "question", "gold", "completion", "steps_right", "chain_correct"]
        rows = [
            [
                r["uid"],
                r["depth"],
                r["question"],
                " ; ".join(r["gold_steps"]) + f" #### {r['gold_answer']}",
                r["completion"],
                "".join("✓" if ok else "✗" for ok in r["step_correct"]),
                r["chain_correct"],
            ]
            for r in records[:n_samples]
        ]
        logger.log_table(key="test/samples", columns=columns, data=rows)
    if exported is not None and getattr(logger, "_log_model", False):
        import wandb

        artifact = wandb.Artifact(f"student-{logger.experiment.id}", type="model")
        artifact.add_dir(str(exported))
        logger.experiment.log_artifact(artifact)


def unsharded_student(cfg: DictConfig, p: Prepared, state: dict):
    """A fresh, unsharded student holding the gathered ``state`` (the module's full state dict)."""
    student = prepare_student(student_settings(cfg.student), build_context(cfg), p.tokenizer, p.teacher, cfg.seed)
    student.load_state_dict(student_state(state))
    return student.to(p.module.device)


def resolve_ckpt_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """``ckpt_path``: a path, ``last`` (this run directory's last checkpoint), or null, which resumes
    automatically when the run directory is reused and holds a checkpoint (an interrupted run)."""
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        if not last.exists():
            raise FileNotFoundError(
                f"ckpt_path=last, but {last} does not exist (hydra.run.dir names the run to resume)"
            )
        check_checkpoint(last)
        return str(last)
    if ckpt is None:
        # Lightning's SLURM auto-requeue saves hpc_ckpt_N.ckpt on the way out: the newest one wins.
        found = [c for c in [last, *out_dir.glob("hpc_ckpt_*.ckpt")] if c.exists()]
        if found:
            newest = max(found, key=lambda c: c.stat().st_mtime)
            log.info("resuming from %s (this run directory holds an interrupted run's checkpoint)", newest)
            check_checkpoint(newest)
            return str(newest)
    if ckpt is not None and not Path(ckpt).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint")
    if ckpt is not None:
        check_checkpoint(Path(ckpt))
    return ckpt


def check_launch(trainer: L.Trainer) -> None:
    """Refuse the one combination that misbehaves: a local Hydra multirun with Lightning's DDP launcher.

    Lightning starts ranks 1..N-1 by re-running the command line (``_SubprocessScriptLauncher``); in a
    multirun that command line is the whole sweep, so every extra rank would start a sweep of its own.
    Under SLURM (``hydra/launcher=submitit_slurm``) the ranks are SLURM tasks and nothing is re-run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if trainer.world_size == 1 or not HydraConfig.initialized():
        return
    launcher = getattr(trainer.strategy, "launcher", None)
    relaunches = launcher is not None and type(launcher).__name__ == "_SubprocessScriptLauncher"
    if relaunches and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            "trainer=ddp under a local multirun (-m): Lightning would re-run the whole sweep once per extra "
            "rank. Run the jobs one by one (python -m rtd_lab trainer=ddp ...), or sweep on a cluster with "
            "hydra/launcher=submitit_slurm, where SLURM starts the ranks (docs/scale.md, Multi-node on SLURM)."
        )


def train(cfg: DictConfig) -> dict:
    """Run one experiment; returns what it writes to ``results.json``."""
    quiet_duplicate_logs()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        finished = claim_run_dir(out_dir, OmegaConf.to_container(cfg, resolve=True))
        if finished is not None:
            return finished
    t0 = time.time()
    p = prepare(cfg, out_dir)
    datamodule, teacher, module, evaluator = p.datamodule, p.teacher, p.module, p.evaluator
    benchmark, timings = p.data.benchmark, p.timings
    t_cache = time.time()
    cache = attach_teacher_cache(cfg, p)
    if cache is not None:
        timings["teacher_cache"] = round(time.time() - t_cache, 1)

    logger = make_logger(cfg, out_dir)
    if logger:
        logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    curriculum: DepthCurriculum | None = hydra.utils.instantiate(cfg.curriculum) if cfg.get("curriculum") else None
    if curriculum is not None:
        callbacks.append(curriculum)
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, TQDMProgressBar)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    check_launch(trainer)

    t1 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg, out_dir))
    timings["student_fit"] = round(time.time() - t1, 1)
    if trainer.world_size > 1:
        # Training is distributed; evaluation (greedy generation over the test split) runs once, on
        # rank zero, with the trained student, and every other rank stops here.
        trainer.strategy.barrier()
        rank = trainer.global_rank
        if not isinstance(trainer.strategy, DDPStrategy):
            # A sharded student (FSDP, DeepSpeed) cannot generate on one rank: gather its full state
            # while every rank is still in the process group, and evaluate an unsharded copy.
            state = trainer.strategy.lightning_module_state_dict()
            if rank == 0:
                module.student = unsharded_student(cfg, p, state)
        # Rank zero goes on alone: no collective (e.g. a torchmetrics sync) may wait for the others.
        torch.distributed.destroy_process_group()
        if rank != 0:
            return {}

    t2 = time.time()
    if trainer.world_size > 1:
        student_metrics, module.test_records = evaluator.evaluate(module.student, datamodule.test_dataloader(), "test")
        if logger:
            logger.log_metrics({f"test/{k}": v for k, v in student_metrics.items()}, step=trainer.global_step)
    else:
        trainer.test(module, datamodule=datamodule, verbose=False)
        student_metrics = {k: float(v) for k, v in module.test_metric.compute().items()}
    timings["student_eval"] = round(time.time() - t2, 1)

    t3 = time.time()
    teacher.to(module.device)
    teacher_metrics, teacher_records = evaluator.evaluate(teacher.model, datamodule.test_dataloader(), "teacher eval")
    timings["teacher_eval"] = round(time.time() - t3, 1)
    diagnostics = None
    diag_settings = DiagnosticsSettings(**container(cfg.diagnostics))
    if diag_settings.enabled:
        t4 = time.time()
        diagnostics = run_diagnostics(
            diag_settings, module, teacher.model, teacher.layer, datamodule, evaluator, student_metrics
        )
        timings["diagnostics"] = round(time.time() - t4, 1)
    command = command_line()
    exported = None
    if cfg.export.enabled:
        t5 = time.time()
        out = Path(cfg.export.out_dir) if cfg.export.out_dir else out_dir / "student"
        exported = export_student(
            cfg, module.student, p.tokenizer, evaluator, out, p.method_name, student_metrics, command, cfg.export
        )
        timings["export"] = round(time.time() - t5, 1)
    timings["total"] = round(time.time() - t0, 1)

    world = trainer.world_size
    tokens = int(module.tokens_trained) * world if module.tokens_trained is not None else None
    results = {
        "method": p.method_name,
        "run": cfg.get("run_name", p.method_name),
        "seed": cfg.seed,
        "command": command,
        "depths": benchmark.depths,
        "teacher": {**{k: v for k, v in p.teacher_info.items() if k != "config"}, "metrics": teacher_metrics},
        "student": {
            "metrics": student_metrics,
            "steps": trainer.global_step,
            # Throughput of this process's training (a resumed run counts from its restart); under DDP
            # rank zero's count times the world size (the ranks share each global batch evenly).
            "train_tokens": tokens,
            "tokens_per_second": round(tokens / timings["student_fit"], 1)
            if tokens and timings["student_fit"]
            else None,
            "base": p.student_base,
            "export": str(exported) if exported else None,  # a Hugging Face model folder
            "learning_curve": next((c.summary() for c in callbacks if isinstance(c, LearningCurve)), None),
        },
        "curriculum": curriculum.summary() if curriculum is not None else None,
        "method_info": module.summary() if hasattr(module, "summary") else None,  # e.g. the PRM's report
        "teacher_traces": asdict(p.trace_report) if p.trace_report else None,
        "segmenter": p.segmenter_info,
        "teacher_cache": {"path": str(cache.path), "tail": cache.tail, **cache.manifest["stats"]} if cache else None,
        "train_set": train_set_stats(datamodule.encoded["train"], benchmark, p.data.answer_only),
        "skipped_records": dict(getattr(benchmark, "skipped", None) or {}),  # data.benchmark.on_error=skip
        "diagnostics": diagnostics,
        "timings_seconds": timings,
        "environment": environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_jsonl(out_dir / "predictions_student.jsonl", module.test_records)
    atomic_write_jsonl(out_dir / "predictions_teacher.jsonl", teacher_records)
    if logger:
        logger.log_metrics({f"teacher/{k}": v for k, v in teacher_metrics.items()}, step=trainer.global_step)
        if diagnostics:
            logger.log_metrics(flat_diagnostics(diagnostics), step=trainer.global_step)
        if isinstance(logger, WandbLogger):
            log_to_wandb(logger, module.test_records, cfg.export.log_samples, exported)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            # Close the run: the next job of a multirun, in this same process, must start its own.
            logger.experiment.finish()

    run_name = results["run"]
    columns = {"teacher": teacher_metrics, f"student ({run_name})": student_metrics}
    for scheme, q in (diagnostics or {}).get("quantized", {}).items():  # the student after weight quantisation
        if "metrics" in q:
            columns[f"{scheme.replace('bit', '-bit')} student"] = q["metrics"]
    print(f"\nChain accuracy by depth, test split ({out_dir / 'results.json'}):")
    print(depth_table(benchmark.depths, columns))
    print(
        f"student {run_name}: answer acc {student_metrics['answer_acc']:.3f}, "
        f"step acc {student_metrics['step_acc']:.3f}, chain acc {student_metrics['chain_acc']:.3f}; "
        f"wall time {timings['total']:.0f}s"
    )
    return results
