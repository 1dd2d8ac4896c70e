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
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceTraining:
    """How a model is trained from scratch on gold traces (``teacher.train``, ``student.base.train``).

    Warm-up, then the peak rate until the model has *learned* — its greedy chain accuracy on the
    validation split, checked every ``check_every`` steps, reaches ``target_chain_acc`` — then a
    linear decay over ``decay_steps`` steps, and stop. Small models learn a lookup all at once after
    a plateau of random length (experiments/calibration): a fixed budget either wastes steps or ends
    some seeds inside the plateau; this ends every seed past it. ``max_steps`` caps the whole run
    (the decay then starts ``decay_steps`` before it); a model still short of the target at the end
    is an error, never a silently half-trained cache entry. ``target_chain_acc: null`` is a fixed
    warm-up / stable / decay run of ``max_steps``.
    """

    max_steps: int = 10000  # cap on optimizer steps
    batch_size: int = 64
    lr: float = 3.0e-3  # AdamW peak learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 100
    target_chain_acc: float | None = 0.99  # validation chain accuracy that counts as learned
    check_every: int = 250  # steps between validation checks
    decay_steps: int = 500  # linear decay to 0 once learned
    seed: int = 0  # initialisation and batch order
    order_family: int = 0  # another family of batch orders for the same seed (data.order_family)
    field: str = "teacher.train"  # names the config block in errors

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "check_every", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.field}.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"{self.field}.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps + self.decay_steps > self.max_steps:
            raise ValueError(
                f"{self.field}: warmup_steps + decay_steps ({self.warmup_steps} + {self.decay_steps}) exceed "
                f"max_steps ({self.max_steps})"
            )
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            finite = isinstance(value, int | float) and math.isfinite(value)
            if not (finite and (value > 0 or not positive and value == 0)):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"{self.field}.{name} must be a finite number {bound}, got {value!r}")
        target = self.target_chain_acc
        if target is not None and not (isinstance(target, int | float) and 0 < target <= 1):
            raise ValueError(f"{self.field}.target_chain_acc must be in (0, 1] or null, got {target!r}")

    @classmethod
    def from_config(cls, settings: dict[str, Any], field: str) -> TraceTraining:
        known = set(cls.__dataclass_fields__) - {"field"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{field} has no setting {unknown}; known: {sorted(known)}")
        return cls(**settings, field=field)


class UntilLearned(Callback):
    """The schedule of ``TraceTraining``: checks validation chain accuracy, starts the decay once the
    target is met (or ``decay_steps`` before ``max_steps``), stops when the decay is done."""

    def __init__(self, settings: TraceTraining, evaluate):
        self.s = settings
        self.evaluate = evaluate  # () -> validation metrics of the model being trained
        self.decay_start: int | None = None
        self.checks: list[tuple[int, float]] = []
        self.reached = False

    def factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step``."""
        if step < self.s.warmup_steps:
            return (step + 1) / self.s.warmup_steps
        if self.decay_start is None or step < self.decay_start:
            return 1.0
        return max(0.0, 1.0 - (step - self.decay_start) / self.s.decay_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.decay_start is None:
            if self.s.target_chain_acc is not None and step % self.s.check_every == 0:
                acc = self.evaluate()["chain_acc"]
                self.checks.append((step, acc))
                log.info("step %d: validation chain accuracy %.3f (learned at %s)", step, acc, self.s.target_chain_acc)
                if acc >= self.s.target_chain_acc:
                    self.reached, self.decay_start = True, step
            if self.decay_start is None and step >= self.s.max_steps - self.s.decay_steps:
                self.decay_start = step
        if self.decay_start is not None and step >= self.decay_start + self.s.decay_steps:
            trainer.should_stop = True


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
    """Plain CE on ``benchmark``'s gold traces until learned (``TraceTraining``), then greedy chain
    accuracy on its validation split. Returns what it measured; raises if the target was not met."""
    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.evaluation import Evaluator
    from rtd_lab.methods.cot_ft import CoTFineTune

    L.seed_everything(settings.seed, workers=True)
    dm = ReasoningDataModule.gold(
        benchmark,
        tokenizer,
        settings.batch_size,
        eval_batch_size,
        seed=settings.seed,
        order_family=settings.order_family,
    )
    evaluator = Evaluator(tokenizer, benchmark)

    def evaluate() -> dict:
        metrics, _ = evaluator.evaluate(model, dm.val_dataloader(), "validation")
        return metrics

    schedule = UntilLearned(settings, evaluate)
    module = CoTFineTune(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay),
        scheduler=lambda optimizer, total_steps: LambdaLR(optimizer, schedule.factor),
    )
    callbacks = [schedule] + ([TQDMProgressBar(refresh_rate=25)] if progress else [])
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
        callbacks=callbacks,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root_dir) if root_dir else None,
    )
    start = time.time()
    trainer.fit(module, datamodule=dm)
    seconds = round(time.time() - start, 1)
    metrics = evaluate()
    target = settings.target_chain_acc
    if target is not None and metrics["chain_acc"] < target:
        raise RuntimeError(
            f"{settings.field}: the model reached validation chain accuracy {metrics['chain_acc']:.3f} in "
            f"{trainer.global_step} steps, short of target_chain_acc={target}: raise {settings.field}.max_steps "
            f"(checks: {schedule.checks})"
        )
    return {
        "train_seconds": seconds,
        "steps": trainer.global_step,
        "decay_start": schedule.decay_start,
        "checks": schedule.checks,
        "val_metrics": metrics,
    }
