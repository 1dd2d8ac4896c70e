"""Causal LMs trained from scratch on a benchmark's gold traces (plain CE), cached by what made them.

Two models are made this way:

* the **from-scratch teacher** (``teacher: scratch``), trained on the benchmark itself;
* the student's **base checkpoint** (``student.base``): the analogue of the RTD paper's pretrained
  student. The paper distils into Llama-3-8B, a model that already reads and writes the language of
  the task and knows arithmetic; distillation is a fine-tuning problem there. A student trained
  from nothing on the benchmark instead spends its budget discovering the task (small models
  learn each lookup of a step all at once, after a plateau of random length), and what a run
  measures is then how far it got — seed noise, not what a method transfers. The base is trained
  on a *sibling world* of the benchmark: the same question and trace language, the same operators,
  other facts (``data.benchmark`` with ``world_seed`` in place of its seed: on the synthetic
  benchmark, other lookup tables and other questions). It comes to distillation knowing how to read
  a question, copy operands, chain steps and stop, and none of the facts it will be tested on, so
  distillation transfers the teacher's knowledge and its use in a chain, into a student whose
  capacity, not its luck with a plateau, sets how much it keeps.

One base per ``student.base.seed`` (``${seed}`` by default): the seeds of a sweep vary the base
as well as the batch order, and two methods with the same seed start from the same base — the
blocks of a paired comparison (``rtd_lab.stats``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from rtd_lab.optim import warmup_stable_decay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceTraining:
    """How a model is trained from scratch on gold traces (``teacher.train``, ``student.base.train``)."""

    max_steps: int = 3000  # optimizer steps
    batch_size: int = 64
    lr: float = 3.0e-3  # AdamW peak learning rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.02  # linear warm-up share of the steps
    decay_ratio: float = 0.2  # final linear decay share (warm-up / stable / decay: rtd_lab.optim)
    seed: int = 0  # initialisation and batch order
    order_family: int = 0  # another family of batch orders for the same seed (data.order_family)
    field: str = "teacher.train"  # names the config block in errors

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.field}.{name} must be an integer >= 1, got {value!r}")
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            finite = isinstance(value, int | float) and math.isfinite(value)
            if not (finite and (value > 0 or not positive and value == 0)):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"{self.field}.{name} must be a finite number {bound}, got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"{self.field}.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.decay_ratio <= 1 - self.warmup_ratio:
            raise ValueError(f"{self.field}.decay_ratio must be in [0, 1 - warmup_ratio], got {self.decay_ratio}")

    @classmethod
    def from_config(cls, settings: dict[str, Any], field: str) -> TraceTraining:
        known = set(cls.__dataclass_fields__) - {"field"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{field} has no setting {unknown}; known: {sorted(known)}")
        return cls(**settings, field=field)


def train_on_traces(
    model: torch.nn.Module,
    benchmark,
    tokenizer,
    settings: TraceTraining,
    *,
    accelerator: str = "auto",
    precision: str = "32-true",
    eval_batch_size: int = 300,
    progress: bool = True,
    root_dir: Path | None = None,
) -> dict:
    """Plain CE on ``benchmark``'s gold traces for ``settings.max_steps`` steps (warm-up / stable / decay),
    then greedy chain accuracy on its validation split. Returns what it measured."""
    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.evaluation import Evaluator
    from rtd_lab.methods.cot_ft import CoTFineTune

    L.seed_everything(settings.seed, workers=True)
    dm = ReasoningDataModule(
        benchmark,
        batch_size=settings.batch_size,
        eval_batch_size=eval_batch_size,
        seed=settings.seed,
        order_family=settings.order_family,
    )
    dm.connect(tokenizer)
    module = CoTFineTune(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay),
        scheduler=lambda optimizer, total_steps: warmup_stable_decay(
            optimizer, total_steps, settings.warmup_ratio, settings.decay_ratio, field=settings.field
        ),
    )
    trainer = L.Trainer(
        max_steps=settings.max_steps,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[TQDMProgressBar(refresh_rate=25)] if progress else [],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root_dir) if root_dir else None,
    )
    start = time.time()
    trainer.fit(module, datamodule=dm)
    seconds = round(time.time() - start, 1)
    metrics, _ = Evaluator(tokenizer, benchmark).evaluate(model, dm.val_dataloader(), "validation")
    return {"train_seconds": seconds, "steps": trainer.global_step, "val_metrics": metrics}
