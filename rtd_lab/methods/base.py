"""What every method shares: the student, the frozen teacher, optimisation, logging, evaluation.

A method subclasses ``ReasoningModule`` and implements one thing, ``compute_losses(batch)``,
returning a dict whose ``"loss"`` is optimised and whose other entries are logged alongside it
(``train/loss_kd``, ``val/loss_coherence``, ...; names listed in ``diagnostics`` are measurements,
logged without the ``loss_`` prefix). Train, validation and test share that step.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn

from rtd_lab.evaluation import Evaluator
from rtd_lab.metrics import ReasoningAccuracy
from rtd_lab.models.teacher import Teacher


def check_weight(value: float, field: str) -> float:
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value}")
    return float(value)


class ReasoningModule(L.LightningModule):
    needs_teacher = True
    # Entries of compute_losses' dict that are measurements, not losses: logged as {stage}/{name}.
    diagnostics: tuple[str, ...] = ()

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        evaluator: Evaluator | None = None,
    ):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {type(self).__name__} distils from a teacher, but none was given")
        self.student = student
        self.teacher = teacher
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluator = evaluator
        self.test_metric = ReasoningAccuracy(evaluator.benchmark.depths) if evaluator else None
        self.test_records: list[dict] = []
        # The teacher is frozen and cached on disk by its own key: keep it out of checkpoints.
        self.strict_loading = False

    # ---- the one thing a method defines -------------------------------------------------------
    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- shared plumbing ----------------------------------------------------------------------
    def student_forward(self, batch: dict, hidden: bool = False):
        # No attention mask: training batches are right-padded, so under causal attention no real
        # token ever sees a pad and every real position's output is the same with or without it;
        # the padding mask only costs time (about a quarter of a CPU step at this size).
        # Pad positions' outputs differ, but no label or boundary ever points at one.
        return self.student(input_ids=batch["input_ids"], output_hidden_states=hidden, use_cache=False)

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        losses = self.compute_losses(batch)
        bs = batch["input_ids"].size(0)
        for name, value in losses.items():
            if name == "loss":
                key = f"{stage}/loss"
            else:
                key = f"{stage}/{name}" if name in self.diagnostics else f"{stage}/loss_{name}"
            self.log(key, value.detach(), batch_size=bs, prog_bar=name == "loss", sync_dist=stage != "train")
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if self.evaluator is None:
            raise RuntimeError("testing needs an Evaluator (generation + scoring)")
        scored = self.evaluator.score_batch(self.student, batch)
        self.evaluator.update_metric(self.test_metric, scored)
        self.test_records.extend(asdict(s) for s in scored)

    def on_test_epoch_start(self) -> None:
        self.test_records = []
        self.test_metric.reset()

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metric.compute().items():
            self.log(f"test/{name}", value)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # student + method projections
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
