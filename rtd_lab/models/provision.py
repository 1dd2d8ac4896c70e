"""The run's teacher and student, built once per config hash and cached.

A teacher is ``TeacherSettings.pretrained`` (any Hugging Face causal LM), or a model trained from
scratch on the benchmark's gold traces and cached under ``<cache_dir>/teachers/<key>``. A student
starts from ``StudentSettings.pretrained``, else from its base checkpoint (``StudentSettings.base``:
pretraining on a sibling world, ``rtd_lab.models.pretrain``, cached under
``<cache_dir>/student_bases/<key>``), else from its initialisation. ``rtd_lab.tasks.settings`` turns
the config's ``teacher:`` / ``student:`` blocks into these settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtd_lab.data.tokenizer import same_tokenizer
from rtd_lab.models.build import (
    build_causal_lm,
    check_finite_weights,
    check_load_options,
    check_same_tokenizer,
    load_tokenizer,
)
from rtd_lab.models.pretrain import TraceTraining, train_on_traces
from rtd_lab.models.teacher import Teacher, check_layer
from rtd_lab.utils import artifact_key, build_or_load, config_hash, retain_freed_memory

log = logging.getLogger(__name__)
TEACHER_META = "rtd_teacher.json"
# Part of every teacher's cache key: bump it when code that shapes a from-scratch teacher changes
# (the benchmark generator, the tokenizer, the training loop), so no stale teacher is reused.
TEACHER_CACHE_VERSION = 2
STUDENT_BASE_META = "rtd_student_base.json"
STUDENT_BASE_VERSION = 1  # as TEACHER_CACHE_VERSION, for the student's base checkpoints


@dataclass(frozen=True)
class TeacherSettings:
    """The config's ``teacher:`` block."""

    pretrained: str | None = None  # hub id or local path; None: train from scratch (cached)
    trust_remote_code: bool = False  # only when the user trusts the model's code
    arch: str | None = None  # from scratch: a transformers architecture name (e.g. "llama")
    model: dict | None = None  # from scratch: fields of the architecture's config
    layer: int | str = -1  # the hidden layer whose boundary states students align to (-1: last; "mean": all)
    train: dict | None = None  # from scratch: ``TraceTraining`` fields
    revision: str | None = None  # pretrained from the hub: a commit, branch or tag
    dtype: str | None = None  # float32 | bfloat16 | float16; None: as stored (the teacher is frozen)
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 | flex_attention; None: default

    def __post_init__(self) -> None:
        check_load_options(self.dtype, self.attn_implementation, "teacher")
        # The index range needs the layer count: known here for a teacher trained from scratch.
        n_layers = (self.model or {}).get("num_hidden_layers") if self.pretrained is None else None
        check_layer(self.layer, n_layers, "teacher.layer")


@dataclass(frozen=True)
class StudentBaseSettings:
    """The config's ``student.base:`` block: the student's pretraining on a sibling world."""

    world_seed: int  # the sibling world: data.benchmark with this seed (never the test world's)
    seed: int  # the base's own seed (one base per run seed by default)
    train: dict  # ``TraceTraining`` fields


@dataclass(frozen=True)
class StudentSettings:
    """The config's ``student:`` block."""

    pretrained: str | None = None
    trust_remote_code: bool = False
    arch: str | None = None
    model: dict | None = None
    base: StudentBaseSettings | None = None  # None: no base checkpoint
    revision: str | None = None  # pretrained from the hub: a commit, branch or tag
    # The trained weights' dtype. None: float32 master weights whatever the checkpoint stores (a bf16
    # checkpoint would otherwise train in pure bf16 under precision 32-true; bf16-mixed keeps fp32
    # masters too). bfloat16 / float16: train in that dtype, as asked.
    dtype: str | None = None
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 | flex_attention; None: default
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time
    compile: bool = False  # torch.compile the student in place (its state dict keeps its keys)
    # Low-rank adapters (PEFT) instead of training every weight: {r, alpha, dropout, target_modules};
    # None: full fine-tuning. Only the adapters (and a method's projections) are trained.
    lora: dict | None = None

    def __post_init__(self) -> None:
        check_load_options(self.dtype, self.attn_implementation, "student")
        if self.lora is not None:
            lora_config(self.lora)  # its checks, before any model is built


LORA_FIELDS = {"r", "alpha", "dropout", "target_modules"}


def lora_config(settings: dict):
    """``student.lora`` as a ``peft.LoraConfig`` (checked first, so a typo fails before any work)."""
    unknown, missing = set(settings) - LORA_FIELDS, LORA_FIELDS - set(settings)
    if unknown or missing:
        raise ValueError(
            f"student.lora needs exactly {sorted(LORA_FIELDS)}: unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    r, alpha, dropout, targets = settings["r"], settings["alpha"], settings["dropout"], settings["target_modules"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"student.lora.r must be an integer >= 1, got {r!r}")
    if not isinstance(alpha, int | float) or alpha <= 0:
        raise ValueError(f"student.lora.alpha must be > 0, got {alpha!r}")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"student.lora.dropout must be in [0, 1), got {dropout!r}")
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"student.lora.target_modules must be a non-empty list of module names, got {targets!r}")
    try:
        from peft import LoraConfig
    except ImportError as err:
        raise ValueError("student.lora needs the peft package: pip install 'rtd_lab[lora]'") from err
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), task_type="CAUSAL_LM")


@dataclass(frozen=True)
class BuildContext:
    """What building a model depends on beyond its own settings: the data, where caches live, the
    trainer's device and precision."""

    benchmark: dict  # the data.benchmark config: part of every cache key; a base's world derives from it
    cache_dir: Path
    accelerator: str = "auto"
    precision: str | int = "32-true"
    eval_batch_size: int = 256
    progress: bool = True


def teacher_key(t: TeacherSettings, ctx: BuildContext) -> str:
    """What determines a from-scratch teacher: the training data, the architecture, its training."""
    return artifact_key(TEACHER_CACHE_VERSION, teacher_key_parts(t, ctx))


def teacher_key_parts(t: TeacherSettings, ctx: BuildContext) -> dict:
    return {"benchmark": ctx.benchmark, "arch": t.arch, "model": t.model, "train": t.train}


def _train_from_scratch(model, benchmark, tokenizer, settings: TraceTraining, ctx: BuildContext, out_dir: Path) -> dict:
    meta = train_on_traces(
        model,
        benchmark,
        tokenizer,
        settings,
        accelerator=ctx.accelerator,
        precision=ctx.precision,
        eval_batch_size=ctx.eval_batch_size,
        progress=ctx.progress,
        root_dir=out_dir,
    )
    model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    return meta


def train_teacher(t: TeacherSettings, ctx: BuildContext, benchmark, tokenizer, out_dir: Path) -> dict:
    """Train a causal LM from scratch on the benchmark's gold traces (plain CE), save it to ``out_dir``."""
    settings = TraceTraining.from_config(t.train, "teacher.train")
    L.seed_everything(settings.seed, workers=True)
    model = build_causal_lm(tokenizer, arch=t.arch, model=t.model, field="teacher")
    return _train_from_scratch(model, benchmark, tokenizer, settings, ctx, out_dir)


def prepare_teacher(t: TeacherSettings, ctx: BuildContext, benchmark) -> tuple[Teacher, Any, dict]:
    """Load ``t.pretrained``, or the cached from-scratch teacher, training it on a cache miss."""
    if t.pretrained:
        tokenizer = load_tokenizer(t.pretrained, t.trust_remote_code, field="teacher")
        model = build_causal_lm(
            tokenizer,
            pretrained=t.pretrained,
            trust_remote_code=t.trust_remote_code,
            field="teacher",
            revision=t.revision,
            dtype=t.dtype,
            attn_implementation=t.attn_implementation,
        )
        check_finite_weights(model, f"teacher.pretrained={t.pretrained}")
        return Teacher(model, layer=t.layer), tokenizer, {"source": str(t.pretrained)}

    tokenizer = benchmark.build_tokenizer()

    def build(tmp: Path) -> dict:
        meta = train_teacher(t, ctx, benchmark, tokenizer, tmp)
        return {**meta, "config": {"benchmark": ctx.benchmark, "teacher": asdict(t)}}

    parts = teacher_key_parts(t, ctx)
    path, meta = build_or_load(ctx.cache_dir, "teachers", TEACHER_CACHE_VERSION, parts, TEACHER_META, build, "teacher")
    cached_tok = AutoTokenizer.from_pretrained(str(path))
    if not same_tokenizer(cached_tok, tokenizer):
        raise ValueError(f"cached teacher {path} was saved with another tokenizer; delete the folder to retrain it")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    check_finite_weights(model, f"cached teacher {path}")
    return Teacher(model, layer=t.layer), tokenizer, {"source": str(path), **meta}


def base_world(s: StudentSettings, ctx: BuildContext) -> dict | None:
    """The benchmark config of the student base's pretraining world: the run's, with ``world_seed``;
    None for a benchmark without worlds (a data set such as GSM8K has no seed to change)."""
    bench = dict(ctx.benchmark)
    if "seed" not in bench or s.base is None:
        return None
    if s.base.world_seed == bench["seed"]:
        raise ValueError(
            f"student.base.world_seed={s.base.world_seed} equals data.benchmark.seed: the base would be trained on "
            "the test world's own facts; pick another world seed"
        )
    return {**bench, "seed": s.base.world_seed}


def uses_student_base(s: StudentSettings, ctx: BuildContext) -> bool:
    """Whether the student starts from its base checkpoint: ``base`` set, no ``pretrained``, and a
    benchmark with sibling worlds (otherwise a warning says the student starts from scratch)."""
    if s.pretrained or s.base is None:
        return False
    if base_world(s, ctx) is None:
        log.warning(
            "student.base: data.benchmark (%s) has no sibling worlds to pretrain on; the student starts from its "
            "initialisation (set student.pretrained=<id|path> for a pretrained student, or student.base=null)",
            ctx.benchmark.get("_target_"),
        )
        return False
    return True


def student_base_key(s: StudentSettings, ctx: BuildContext, tokenizer) -> str:
    """What determines a student base: its world, the tokenizer, the architecture, its training and its seed."""
    return artifact_key(STUDENT_BASE_VERSION, student_base_key_parts(s, ctx, tokenizer))


def student_base_key_parts(s: StudentSettings, ctx: BuildContext, tokenizer) -> dict:
    return {
        "world": base_world(s, ctx),
        "tokenizer": config_hash(sorted(tokenizer.get_vocab().items())),
        "arch": s.arch,
        "model": s.model,
        "train": s.base.train,
        "seed": s.base.seed,
    }


def student_base_path(s: StudentSettings, ctx: BuildContext, tokenizer) -> Path:
    return ctx.cache_dir / "student_bases" / student_base_key(s, ctx, tokenizer)


def prepare_student_base(s: StudentSettings, ctx: BuildContext, tokenizer) -> Path:
    """The student's base checkpoint (``rtd_lab.models.pretrain``), trained on a cache miss."""

    def build(tmp: Path) -> dict:
        settings = TraceTraining.from_config({**s.base.train, "seed": s.base.seed}, "student.base.train")
        world = hydra.utils.instantiate(base_world(s, ctx))  # tokenised with the run's tokenizer, as the run will be
        log.info("student base (seed %s): pretraining on world %s", s.base.seed, s.base.world_seed)
        L.seed_everything(settings.seed, workers=True)
        model = build_causal_lm(tokenizer, arch=s.arch, model=s.model, field="student")
        meta = _train_from_scratch(model, world, tokenizer, settings, ctx, tmp)
        log.info("student base: world %s validation chain accuracy %.3f, step accuracy %.3f",
                 s.base.world_seed, meta["val_metrics"]["chain_acc"], meta["val_metrics"]["step_acc"])  # fmt: skip
        return {**meta, "world": base_world(s, ctx), "seed": s.base.seed}

    parts = student_base_key_parts(s, ctx, tokenizer)
    kind, version, meta = "student_bases", STUDENT_BASE_VERSION, STUDENT_BASE_META
    path, _ = build_or_load(ctx.cache_dir, kind, version, parts, meta, build, f"student base (seed {s.base.seed})")
    return path


@contextlib.contextmanager
def student_base_beside(t: TeacherSettings, s: StudentSettings, ctx: BuildContext, benchmark, retain_memory: bool):
    """Around the teacher's build: train the student's base checkpoint at the same time, in a second
    process, when both have to be trained (a fresh cache, e.g. the first ``make run``).

    The two are independent (the base learns a sibling world, not from the teacher) and each seeds
    itself, so they come out as they would one after the other (tested byte for byte). A second CPU
    thread makes a step of these small models only about a third faster (docs/scale.md), so two
    builds with half the threads each finish sooner than one after the other with all of them.
    Nothing happens with fewer than two threads (e.g. a job of a parallel sweep), a pretrained
    teacher or student, either one already cached, or on ranks other than zero (they wait for the
    builds' locks). ``retain_memory``: the second process's allocator setting, as this process's
    (``rtd_lab.utils.retain_freed_memory``).
    """
    from lightning.pytorch.utilities import rank_zero_only

    threads = torch.get_num_threads()
    side = None
    if threads >= 2 and t.pretrained is None and rank_zero_only.rank == 0 and uses_student_base(s, ctx):
        teacher_missing = not (ctx.cache_dir / "teachers" / teacher_key(t, ctx) / TEACHER_META).exists()
        if (
            teacher_missing
            and not (student_base_path(s, ctx, benchmark.build_tokenizer()) / STUDENT_BASE_META).exists()
        ):
            args = (s, replace(ctx, progress=False), threads // 2, retain_memory)
            side = multiprocessing.get_context("spawn").Process(target=_student_base_process, args=args)
            side.start()
            log.info("student base (seed %s): trained beside the teacher, in process %s", s.base.seed, side.pid)
            torch.set_num_threads(threads - threads // 2)
    try:
        yield
    except BaseException:
        if side is not None:
            side.terminate()
            side.join()
        raise
    finally:
        torch.set_num_threads(threads)
    if side is not None:
        side.join()
        if side.exitcode != 0:
            raise RuntimeError(
                f"the student base's training (a second process) failed with exit code {side.exitcode}: its "
                "error is above; parallel_builds=false trains it in this process after the teacher"
            )


def _student_base_process(s: StudentSettings, ctx: BuildContext, threads: int, retain_memory: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][student base][%(levelname)s] - %(message)s")
    if retain_memory:
        retain_freed_memory()
    torch.set_num_threads(threads)
    benchmark = hydra.utils.instantiate(ctx.benchmark)
    prepare_student_base(s, ctx, benchmark.build_tokenizer())


def student_base_info(s: StudentSettings, ctx: BuildContext, tokenizer) -> dict | None:
    """The base checkpoint a student started from (for results.json), or None."""
    if not uses_student_base(s, ctx):
        return None
    path = student_base_path(s, ctx, tokenizer)
    return {"source": str(path), **json.loads((path / STUDENT_BASE_META).read_text())}


def prepare_student(s: StudentSettings, ctx: BuildContext, tokenizer, teacher: Teacher | None, seed: int):
    """The student: ``pretrained``, else its base checkpoint (``base``), else built fresh. ``teacher``:
    checked to share the student's vocabulary (None: exporting a trained student, nothing to check)."""
    pretrained = s.pretrained
    if uses_student_base(s, ctx):
        pretrained = str(prepare_student_base(s, ctx, tokenizer))
        L.seed_everything(seed, workers=True)  # the base's training moved the RNGs
    if pretrained:
        check_same_tokenizer(pretrained, tokenizer, field="student.pretrained")
    model = build_causal_lm(
        tokenizer,
        arch=s.arch,
        model=s.model,
        pretrained=pretrained,
        trust_remote_code=s.trust_remote_code,
        field="student",
        revision=s.revision if s.pretrained else None,
        dtype=s.dtype,
        attn_implementation=s.attn_implementation,
    )
    if s.dtype is None and any(p.dtype != torch.float32 for p in model.parameters()):
        log.info("student: %s weights cast to float32 master weights (student.dtype sets another)", model.dtype)
        model = model.float()
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if s.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(s.lora))  # freezes the base weights
    if s.compile:
        model.compile()
    if pretrained:
        check_finite_weights(model, f"student {pretrained}")
    v_s = model.get_output_embeddings().out_features
    v_t = v_s if teacher is None else teacher.model.get_output_embeddings().out_features
    if v_s != v_t:
        raise ValueError(
            f"student vocabulary ({v_s}) differs from the teacher's ({v_t}): "
            "student and teacher must share one tokenizer"
        )
    return model
