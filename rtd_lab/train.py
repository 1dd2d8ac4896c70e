"""``train(cfg)``: teacher (cached) → student distillation → evaluation → results.json + depth table.

A plain function: ``python -m rtd_lab`` calls it through Hydra, tests call it directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtd_lab.curriculum import DepthCurriculum
from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.tokenizer import same_tokenizer
from rtd_lab.diagnostics import flat_diagnostics, run_diagnostics
from rtd_lab.evaluation import Evaluator
from rtd_lab.methods.cot_ft import CoTFineTune
from rtd_lab.models.build import build_causal_lm, check_same_tokenizer, load_tokenizer
from rtd_lab.models.teacher import Teacher
from rtd_lab.optim import warmup_cosine
from rtd_lab.summarize import depth_table
from rtd_lab.teacher_cache import CacheSpec, TeacherCache, prepare_teacher_cache, teacher_identity
from rtd_lab.traces.rft import rft_dataset
from rtd_lab.traces.segment import apply_learned_boundaries
from rtd_lab.traces.teacher import examples_from_dataset, teacher_traces
from rtd_lab.utils import atomic_write_json, atomic_write_jsonl, build_once, config_hash, flatten

log = logging.getLogger(__name__)
TEACHER_META = "rtd_teacher.json"
# Part of every teacher's cache key: bump it when code that shapes a from-scratch teacher changes
# (the benchmark generator, the tokenizer, the training loop), so no stale teacher is reused.
TEACHER_CACHE_VERSION = 1


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def teacher_key(cfg: DictConfig) -> str:
    """What determines a from-scratch teacher: the training data, the architecture, its training."""
    t = cfg.teacher
    return config_hash(
        {
            "version": TEACHER_CACHE_VERSION,
            "benchmark": _container(cfg.data.benchmark),
            "arch": t.arch,
            "model": _container(t.model),
            "train": _container(t.train),
            "bucket_by_length": cfg.data.get("bucket_by_length", False),
        }
    )


def environment() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    packages = ("torch", "transformers", "lightning", "torchmetrics", "tokenizers", "numpy")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


def train_set_stats(datamodule: ReasoningDataModule, benchmark) -> dict:
    """What the student was trained on: examples, distinct questions, and (where one correct path
    exists per question) how many traces differ from it in some step: the RFT table compares these."""
    examples = [x.example for x in datamodule.encoded["train"]]
    stats: dict[str, Any] = {
        "examples": len(examples),
        "questions": len({ex.uid.split("#")[0] for ex in examples}),  # a trace row is "<question uid>#<row>"
        "wrong_steps": None,
    }
    if getattr(benchmark, "unique_paths", False) and not datamodule.answer_only:

        def words(ex) -> list[str]:
            return [" ".join(s.text.split()) for s in ex.steps]

        gold = {ex.uid: words(ex) for split in benchmark.splits().values() for ex in split}
        stats["wrong_steps"] = sum(words(ex) != gold[ex.uid.split("#")[0]] for ex in examples)
    return stats


def train_teacher(cfg: DictConfig, benchmark, tokenizer, out_dir: Path) -> dict:
    """Train a causal LM from scratch on the benchmark's gold traces (plain CE), save it to ``out_dir``."""
    tcfg = cfg.teacher.train
    L.seed_everything(tcfg.seed, workers=True)
    model = build_causal_lm(tokenizer, arch=cfg.teacher.arch, model=_container(cfg.teacher.model), field="teacher")
    dm = ReasoningDataModule(
        benchmark,
        batch_size=tcfg.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        bucket_by_length=cfg.data.get("bucket_by_length", False),
        seed=tcfg.seed,
        # The batch order every cached teacher was trained with (a DataLoader shuffle under
        # seed_everything(teacher.train.seed)). The default teacher is calibrated (1.000 at every
        # depth); trained on the seed + epoch order students now use, its 1,500 steps reached
        # 0.18 chain accuracy (measured, 2026-11-25): this teacher's training is order-sensitive.
        shuffle_from_global_rng=True,
    )
    dm.connect(tokenizer)
    module = CoTFineTune(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay),
        scheduler=lambda optimizer, total_steps: warmup_cosine(optimizer, total_steps, tcfg.warmup_ratio),
    )
    trainer = L.Trainer(
        max_steps=tcfg.max_steps,
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.trainer.get("enable_progress_bar", True),
        callbacks=[TQDMProgressBar(refresh_rate=25)] if cfg.trainer.get("enable_progress_bar", True) else [],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    start = time.time()
    trainer.fit(module, datamodule=dm)
    model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    return {"train_seconds": round(time.time() - start, 1), "steps": trainer.global_step}


def prepare_teacher(cfg: DictConfig, benchmark) -> tuple[Teacher, Any, dict]:
    """Load ``teacher.pretrained``, or the cached from-scratch teacher, training it on a cache miss."""
    t = cfg.teacher
    if t.pretrained:
        tokenizer = load_tokenizer(t.pretrained, t.trust_remote_code, field="teacher")
        model = build_causal_lm(tokenizer, pretrained=t.pretrained, trust_remote_code=t.trust_remote_code)
        return Teacher(model, layer=t.layer), tokenizer, {"source": str(t.pretrained)}

    tokenizer = benchmark.build_tokenizer()
    key = teacher_key(cfg)
    root = Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir)) / "teachers"
    path = root / key
    if not (path / TEACHER_META).exists():
        log.info("teacher %s not in cache: training it from scratch (%s)", key, path)

        def build(tmp: Path) -> dict:
            meta = train_teacher(cfg, benchmark, tokenizer, tmp)
            return {
                **meta,
                "key": key,
                "config": {"benchmark": _container(cfg.data.benchmark), "teacher": _container(t)},
            }

        build_once(path, TEACHER_META, build)
    else:
        log.info("teacher %s loaded from cache (%s)", key, path)
    cached_tok = AutoTokenizer.from_pretrained(str(path))
    if not same_tokenizer(cached_tok, tokenizer):
        raise ValueError(f"cached teacher {path} was saved with another tokenizer; delete the folder to retrain it")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    meta = json.loads((path / TEACHER_META).read_text())
    return Teacher(model, layer=t.layer), tokenizer, {"source": str(path), **meta}


def prepare_student(cfg: DictConfig, tokenizer, teacher: Teacher):
    s = cfg.student
    if s.pretrained:
        check_same_tokenizer(s.pretrained, tokenizer, field="student.pretrained")
    model = build_causal_lm(
        tokenizer,
        arch=s.arch,
        model=_container(s.model),
        pretrained=s.pretrained,
        trust_remote_code=s.trust_remote_code,
        field="student",
    )
    v_s = model.get_output_embeddings().out_features
    v_t = teacher.model.get_output_embeddings().out_features
    if v_s != v_t:
        raise ValueError(
            f"student vocabulary ({v_s}) differs from the teacher's ({v_t}): "
            "student and teacher must share one tokenizer"
        )
    return model


def _quiet_duplicate_logs() -> None:
    # `import lightning` gives its logger a console handler of its own; under Hydra, whose root
    # handlers already print to the console and the run's log file, every line would show twice.
    if logging.getLogger().hasHandlers():
        for handler in list(logging.getLogger("lightning").handlers):
            logging.getLogger("lightning").removeHandler(handler)


@dataclass
class Prepared:
    """Everything a run builds before training: shared by ``train`` and ``task=cache``."""

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


def prepare(cfg: DictConfig, out_dir: Path | None = None) -> Prepared:
    """Teacher (cached), data (traces, boundaries), student and method, in that order."""
    timings: dict[str, float] = {}
    t0 = time.time()
    datamodule: ReasoningDataModule = hydra.utils.instantiate(cfg.data)
    benchmark = datamodule.benchmark
    teacher, tokenizer, teacher_info = prepare_teacher(cfg, benchmark)
    timings["teacher_ready"] = round(time.time() - t0, 1)

    L.seed_everything(cfg.seed, workers=True)
    student = prepare_student(cfg, tokenizer, teacher)
    if out_dir is not None and rank_zero_only.rank == 0:
        tokenizer.save_pretrained(out_dir / "tokenizer")
    datamodule.connect(tokenizer)
    evaluator = Evaluator(tokenizer, benchmark)
    trace_report = None
    if datamodule.trace_source != "gold":
        t_traces = time.time()
        if datamodule.trace_source == "teacher":
            examples, trace_report = teacher_traces(
                teacher.model, benchmark.splits()["train"], tokenizer, benchmark, cfg.data.eval_batch_size
            )
        elif datamodule.trace_source == "rft":  # SAMPLE -> FILTER here (cached), then train on what survives
            examples, trace_report = examples_from_dataset(str(rft_dataset(cfg)), benchmark)
        else:  # a SAMPLE or FILTER output on disk: rejection-sampling fine-tuning (RFT) and friends
            examples, trace_report = examples_from_dataset(datamodule.trace_source, benchmark)
        datamodule.use_train_traces(examples)
        timings["teacher_traces"] = round(time.time() - t_traces, 1)
    segmenter_info = None
    if datamodule.boundaries == "learned":  # seed 001's boundary classifier on teacher hidden states
        segmenter_info = apply_learned_boundaries(
            datamodule,
            teacher.model,
            hydra.utils.to_absolute_path(cfg.paths.cache_dir),
            key_parts={"teacher": str(teacher.model.name_or_path), "benchmark": _container(cfg.data.benchmark)},
            settings=_container(cfg.segment),
        )

    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    method_name = method_cfg.pop("name")
    module = hydra.utils.instantiate(
        method_cfg,
        student=student,
        teacher=teacher,
        evaluator=evaluator,
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler),
    )
    return Prepared(
        datamodule,
        teacher,
        tokenizer,
        teacher_info,
        module,
        method_name,
        evaluator,
        trace_report,
        segmenter_info,
        timings,
    )


def attach_teacher_cache(cfg: DictConfig, p: Prepared, force_build: bool = False) -> TeacherCache | None:
    """The offline teacher cache of this run's (teacher, training data, boundaries), per ``teacher_cache``."""
    settings = _container(cfg.get("teacher_cache")) or {"mode": "off"}
    if not p.module.needs_teacher or (settings.get("mode") == "off" and not force_build):
        return None
    spec = CacheSpec(
        top_k=settings.get("top_k", 16),
        layer=p.teacher.layer,
        dtype=settings.get("dtype", "float16"),
        **p.module.cache_request(),
    )
    p.datamodule.setup()
    cache = prepare_teacher_cache(
        settings,
        p.teacher,
        p.datamodule.encoded["train"],
        spec,
        teacher_identity(p.teacher_info, p.teacher.model),
        Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir)),
        batch_size=cfg.data.eval_batch_size,
        pad_id=p.tokenizer.pad_token_id,
        force_build=force_build,
    )
    p.datamodule.teacher_cache = cache
    return cache


def run_cache(cfg: DictConfig) -> dict:
    """``task=cache``: build (or verify) the offline teacher cache the same ``train`` run would use."""
    p = prepare(cfg)
    if not p.module.needs_teacher:
        raise ValueError(f"method {p.method_name} trains without a teacher: there is nothing to cache")
    cache = attach_teacher_cache(cfg, p, force_build=True)
    info = {"path": str(cache.path), **cache.manifest["stats"], "spec": cache.manifest["spec"]}
    print(
        f"teacher cache {cache.path}: {len(cache)} examples, {info['supervised_tokens']} supervised tokens, "
        f"{info['bytes'] / 1e6:.1f} MB ({info['bytes_per_token']:.1f} bytes per token)"
    )
    return info


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
        return str(last)
    if ckpt is None:
        # Lightning's SLURM auto-requeue saves hpc_ckpt_N.ckpt on the way out: the newest one wins.
        found = [c for c in [last, *out_dir.glob("hpc_ckpt_*.ckpt")] if c.exists()]
        if found:
            newest = max(found, key=lambda c: c.stat().st_mtime)
            log.info("resuming from %s (this run directory holds an interrupted run's checkpoint)", newest)
            return str(newest)
    if ckpt is not None and not Path(ckpt).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint")
    return ckpt


def check_launch(cfg: DictConfig, trainer: L.Trainer) -> None:
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
            "hydra/launcher=submitit_slurm, where SLURM starts the ranks (README, Multi-node)."
        )


def train(cfg: DictConfig) -> dict:
    """Run one experiment; returns what it writes to ``results.json``."""
    _quiet_duplicate_logs()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    p = prepare(cfg, out_dir)
    datamodule, teacher, module, evaluator = p.datamodule, p.teacher, p.module, p.evaluator
    benchmark, timings = datamodule.benchmark, p.timings
    t_cache = time.time()
    cache = attach_teacher_cache(cfg, p)
    if cache is not None:
        timings["teacher_cache"] = round(time.time() - t_cache, 1)

    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    if logger:
        logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    curriculum: DepthCurriculum | None = hydra.utils.instantiate(cfg.curriculum) if cfg.get("curriculum") else None
    if curriculum is not None:
        callbacks.append(curriculum)
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, TQDMProgressBar)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    check_launch(cfg, trainer)

    t1 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg, out_dir))
    timings["student_fit"] = round(time.time() - t1, 1)
    if trainer.world_size > 1:
        # Training is distributed; evaluation (greedy generation over the test split) runs once, on
        # rank zero, with the trained student, and every other rank stops here.
        trainer.strategy.barrier()
        rank = trainer.global_rank
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
    if cfg.get("diagnostics") and cfg.diagnostics.get("enabled", True):
        t4 = time.time()
        diagnostics = run_diagnostics(
            _container(cfg.diagnostics), module, teacher.model, teacher.layer, datamodule, evaluator, student_metrics
        )
        timings["diagnostics"] = round(time.time() - t4, 1)
    timings["total"] = round(time.time() - t0, 1)

    results = {
        "method": p.method_name,
        "run": cfg.get("run_name", p.method_name),
        "seed": cfg.seed,
        "depths": benchmark.depths,
        "teacher": {**{k: v for k, v in p.teacher_info.items() if k != "config"}, "metrics": teacher_metrics},
        "student": {"metrics": student_metrics, "steps": trainer.global_step},
        "curriculum": curriculum.summary() if curriculum is not None else None,
        "method_info": module.summary() if hasattr(module, "summary") else None,  # e.g. the PRM's report
        "teacher_traces": asdict(p.trace_report) if p.trace_report else None,
        "segmenter": p.segmenter_info,
        "teacher_cache": {"path": str(cache.path), "tail": cache.tail, **cache.manifest["stats"]} if cache else None,
        "train_set": train_set_stats(datamodule, benchmark),
        "diagnostics": diagnostics,
        "timings_seconds": timings,
        "environment": environment(),  # results depend on these versions (a new transformers changed ours)
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_jsonl(out_dir / "predictions_student.jsonl", module.test_records)
    atomic_write_jsonl(out_dir / "predictions_teacher.jsonl", teacher_records)
    if logger:
        logger.log_metrics({f"teacher/{k}": v for k, v in teacher_metrics.items()}, step=trainer.global_step)
        if diagnostics:
            logger.log_metrics(flat_diagnostics(diagnostics), step=trainer.global_step)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            # Close the run: the next job of a multirun, in this same process, must start its own.
            logger.experiment.finish()

    run_name = results["run"]
    columns = {"teacher": teacher_metrics, f"student ({run_name})": student_metrics}
    print(f"\nChain accuracy by depth, test split ({out_dir / 'results.json'}):")
    print(depth_table(benchmark.depths, columns))
    print(
        f"student {run_name}: answer acc {student_metrics['answer_acc']:.3f}, "
        f"step acc {student_metrics['step_acc']:.3f}, chain acc {student_metrics['chain_acc']:.3f}; "
        f"wall time {timings['total']:.0f}s"
    )
    return results
