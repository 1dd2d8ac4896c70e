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
from rtd_lab.learning_curve import LearningCurve
from rtd_lab.models.build import build_causal_lm, check_finite_weights, check_same_tokenizer, load_tokenizer
from rtd_lab.models.pretrain import TraceTraining, train_on_traces
from rtd_lab.models.teacher import Teacher
from rtd_lab.rundir import check_checkpoint, claim_run_dir
from rtd_lab.summarize import depth_table
from rtd_lab.teacher_cache import CacheSpec, TeacherCache, prepare_teacher_cache, teacher_identity
from rtd_lab.traces.rft import rft_dataset
from rtd_lab.traces.segment import apply_learned_boundaries
from rtd_lab.traces.teacher import examples_from_dataset, teacher_traces
from rtd_lab.utils import atomic_write_json, atomic_write_jsonl, build_once, config_hash, flatten, verify_built

log = logging.getLogger(__name__)
TEACHER_META = "rtd_teacher.json"
# Part of every teacher's cache key: bump it when code that shapes a from-scratch teacher changes
# (the benchmark generator, the tokenizer, the training loop), so no stale teacher is reused.
TEACHER_CACHE_VERSION = 2
STUDENT_BASE_META = "rtd_student_base.json"
STUDENT_BASE_VERSION = 1  # as TEACHER_CACHE_VERSION, for the student's base checkpoints


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
    settings = TraceTraining.from_config(_container(cfg.teacher.train), "teacher.train")
    L.seed_everything(settings.seed, workers=True)
    model = build_causal_lm(tokenizer, arch=cfg.teacher.arch, model=_container(cfg.teacher.model), field="teacher")
    meta = train_on_traces(
        model,
        benchmark,
        tokenizer,
        settings,
        accelerator=cfg.trainer.accelerator,
        precision=cfg.trainer.precision,
        eval_batch_size=cfg.data.eval_batch_size,
        progress=cfg.trainer.get("enable_progress_bar", True),
        root_dir=out_dir,
    )
    model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    return meta


def prepare_teacher(cfg: DictConfig, benchmark) -> tuple[Teacher, Any, dict]:
    """Load ``teacher.pretrained``, or the cached from-scratch teacher, training it on a cache miss."""
    t = cfg.teacher
    if t.pretrained:
        tokenizer = load_tokenizer(t.pretrained, t.trust_remote_code, field="teacher")
        model = build_causal_lm(tokenizer, pretrained=t.pretrained, trust_remote_code=t.trust_remote_code)
        check_finite_weights(model, f"teacher.pretrained={t.pretrained}")
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
    meta = verify_built(path, TEACHER_META, "cached teacher")
    cached_tok = AutoTokenizer.from_pretrained(str(path))
    if not same_tokenizer(cached_tok, tokenizer):
        raise ValueError(f"cached teacher {path} was saved with another tokenizer; delete the folder to retrain it")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    check_finite_weights(model, f"cached teacher {path}")
    return Teacher(model, layer=t.layer), tokenizer, {"source": str(path), **meta}


def base_world(cfg: DictConfig) -> dict | None:
    """The benchmark config of the student base's pretraining world: the run's, with ``world_seed``;
    None for a benchmark without worlds (a data set such as GSM8K has no seed to change)."""
    bench = dict(_container(cfg.data.benchmark))
    world_seed = cfg.student.base.world_seed
    if "seed" not in bench:
        return None
    if world_seed == bench["seed"]:
        raise ValueError(
            f"student.base.world_seed={world_seed} equals data.benchmark.seed: the base would be trained on the "
            "test world's own facts; pick another world seed"
        )
    return {**bench, "seed": world_seed}


def uses_student_base(cfg: DictConfig) -> bool:
    """Whether the student starts from its base checkpoint: ``student.base`` set, no ``student.pretrained``,
    and a benchmark with sibling worlds (otherwise a warning says the student starts from scratch)."""
    s = cfg.student
    if s.pretrained or not s.get("base"):
        return False
    if base_world(cfg) is None:
        log.warning(
            "student.base: data.benchmark (%s) has no sibling worlds to pretrain on; the student starts from its "
            "initialisation (set student.pretrained=<id|path> for a pretrained student, or student.base=null)",
            cfg.data.benchmark.get("_target_"),
        )
        return False
    return True


def student_base_key(cfg: DictConfig, tokenizer) -> str:
    """What determines a student base: its world, the tokenizer, the architecture, its training and its seed."""
    s = cfg.student
    return config_hash(
        {
            "version": STUDENT_BASE_VERSION,
            "world": base_world(cfg),
            "tokenizer": config_hash(sorted(tokenizer.get_vocab().items())),
            "arch": s.arch,
            "model": _container(s.model),
            "train": _container(s.base.train),
            "seed": s.base.seed,
        }
    )


def prepare_student_base(cfg: DictConfig, tokenizer) -> Path:
    """The student's base checkpoint (``rtd_lab.models.pretrain``), trained on a cache miss."""
    s = cfg.student
    key = student_base_key(cfg, tokenizer)
    path = Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir)) / "student_bases" / key
    if (path / STUDENT_BASE_META).exists():
        log.info("student base %s (seed %s) loaded from cache (%s)", key, s.base.seed, path)
        verify_built(path, STUDENT_BASE_META, "cached student base")
        return path
    settings = TraceTraining.from_config({**_container(s.base.train), "seed": s.base.seed}, "student.base.train")
    world = hydra.utils.instantiate(base_world(cfg))  # tokenised with the run's tokenizer, as the run will be
    log.info("student base %s (seed %s) not in cache: pretraining it on world %s (%s)", key, s.base.seed,
             s.base.world_seed, path)  # fmt: skip

    def build(tmp: Path) -> dict:
        L.seed_everything(settings.seed, workers=True)
        model = build_causal_lm(tokenizer, arch=s.arch, model=_container(s.model), field="student")
        meta = train_on_traces(
            model,
            world,
            tokenizer,
            settings,
            accelerator=cfg.trainer.accelerator,
            precision=cfg.trainer.precision,
            eval_batch_size=cfg.data.eval_batch_size,
            progress=cfg.trainer.get("enable_progress_bar", True),
            root_dir=tmp,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        log.info("student base %s: world %s validation chain accuracy %.3f, step accuracy %.3f", key,
                 s.base.world_seed, meta["val_metrics"]["chain_acc"], meta["val_metrics"]["step_acc"])  # fmt: skip
        return {**meta, "key": key, "world": base_world(cfg), "seed": s.base.seed}

    build_once(path, STUDENT_BASE_META, build)
    return path


def prepare_student(cfg: DictConfig, tokenizer, teacher: Teacher):
    """The student: ``student.pretrained``, else its base checkpoint (``student.base``), else built fresh."""
    s = cfg.student
    pretrained = s.pretrained
    if uses_student_base(cfg):
        pretrained = str(prepare_student_base(cfg, tokenizer))
        L.seed_everything(cfg.seed, workers=True)  # the base's training moved the RNGs
    if pretrained:
        check_same_tokenizer(pretrained, tokenizer, field="student.pretrained")
    model = build_causal_lm(
        tokenizer,
        arch=s.arch,
        model=_container(s.model),
        pretrained=pretrained,
        trust_remote_code=s.trust_remote_code,
        field="student",
    )
    if pretrained:
        check_finite_weights(model, f"student {pretrained}")
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
    student_base: dict | None = None  # the base checkpoint the student started from (student.base)


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
    student_base = None
    if uses_student_base(cfg):
        base_path = Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir)) / "student_bases"
        base_path = base_path / student_base_key(cfg, tokenizer)
        student_base = {"source": str(base_path), **json.loads((base_path / STUDENT_BASE_META).read_text())}
    timings["student_ready"] = round(time.time() - t0, 1)
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
    if datamodule.boundaries == "learned":  # the RTD paper's boundary classifier on teacher hidden states
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
        student_base,
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


def run_teacher(cfg: DictConfig) -> dict:
    """``task=teacher``: build (or load) the run's teacher and measure it on the test split — the
    robustness check of the calibration study (``teacher.train.seed``, ``teacher.train.order_family``)."""
    _quiet_duplicate_logs()
    datamodule: ReasoningDataModule = hydra.utils.instantiate(cfg.data)
    benchmark = datamodule.benchmark
    teacher, tokenizer, info = prepare_teacher(cfg, benchmark)
    datamodule.connect(tokenizer)
    metrics, _ = Evaluator(tokenizer, benchmark).evaluate(teacher.model, datamodule.test_dataloader(), "teacher eval")
    out_dir = Path(cfg.paths.output_dir)
    results = {
        "teacher": {**{k: v for k, v in info.items() if k != "config"}, "metrics": metrics},
        "depths": benchmark.depths,
        "environment": environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out_dir / "teacher_results.json", results)
    print(f"\nTeacher chain accuracy by depth, test split ({info['source']}):")
    print(depth_table(benchmark.depths, {"teacher": metrics}))
    return results


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
    if rank_zero_only.rank == 0:
        finished = claim_run_dir(out_dir, OmegaConf.to_container(cfg, resolve=True))
        if finished is not None:
            return finished
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
        "student": {
            "metrics": student_metrics,
            "steps": trainer.global_step,
            "base": p.student_base,
            "learning_curve": next((c.summary() for c in callbacks if isinstance(c, LearningCurve)), None),
        },
        "curriculum": curriculum.summary() if curriculum is not None else None,
        "method_info": module.summary() if hasattr(module, "summary") else None,  # e.g. the PRM's report
        "teacher_traces": asdict(p.trace_report) if p.trace_report else None,
        "segmenter": p.segmenter_info,
        "teacher_cache": {"path": str(cache.path), "tail": cache.tail, **cache.manifest["stats"]} if cache else None,
        "train_set": train_set_stats(datamodule, benchmark),
        "skipped_records": dict(getattr(benchmark, "skipped", None) or {}),  # data.benchmark.on_error=skip
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
