"""What every method shares: the student, the frozen teacher, optimisation, logging, evaluation.

A method subclasses ``ReasoningModule`` and implements one thing, ``compute_losses(batch, n)``,
returning a dict whose ``"loss"`` is optimised and whose other entries are logged alongside it
(``train/loss_kd``, ``val/loss_coherence``, ...; names listed in ``diagnostics`` are measurements,
logged without the ``loss_`` prefix). Train, validation and test share that step.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import nn

from rtd_lab.evaluation import Evaluator
from rtd_lab.losses import IGNORE_INDEX
from rtd_lab.metrics import ReasoningAccuracy
from rtd_lab.models.decode import decode
from rtd_lab.models.teacher import Teacher, TeacherOutput
from rtd_lab.teacher_cache import cached_outputs
from rtd_lab.traces.segment import online_boundaries


def rng_states() -> dict:
    """The global RNG states (torch, Python, NumPy) as plain lists: a checkpoint loads them weights-only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def check_weight(value: float, field: str) -> float:
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value}")
    return float(value)


def check_weights(settings: dict, *names: str) -> None:
    """``check_weight`` for each of ``names`` that ``settings`` holds."""
    for name in names:
        if name in settings:
            check_weight(settings[name], f"method.{name}")


def student_state(module_state: dict) -> dict:
    """The student's weights out of a method module's state dict (a checkpoint's ``state_dict``)."""
    return {k[len("student.") :]: v for k, v in module_state.items() if k.startswith("student.")}


class ItemCounts(NamedTuple):
    """A batch's numbers of items: the denominators of the losses' means (as TRL's ``num_items_in_batch``).

    Counted once per batch by ``ReasoningModule.item_counts`` and handed to the losses as numbers.
    """

    tokens: torch.Tensor  # supervised tokens (labels != -100; labels[:, 0] is always a prompt token)
    real_tokens: torch.Tensor  # non-padding tokens (attention_mask)
    chains: torch.Tensor  # chains with at least one step boundary (boundary_mask)
    transition_chains: torch.Tensor  # chains with at least one step transition (two boundaries)


class ReasoningModule(L.LightningModule):
    needs_teacher = True
    # Entries of compute_losses' dict that are measurements, not losses: logged as {stage}/{name}.
    diagnostics: tuple[str, ...] = ()
    # The student's hidden layer a method matches to the teacher's (diagnostics compare the same one).
    student_layer: int | str = -1
    # Settings of the config's data: block this method cannot train without (checked before any work).
    data_requirements: dict[str, Any] = {}
    # True: the method checks sampled steps position by position, so it needs one valid path per question.
    single_path_only: bool = False
    # True: the method finds step boundaries on text no gold boundary exists for (the student's own
    # samples) with the RTD paper's boundary classifier; the run trains or loads it for the method.
    needs_boundary_classifier: bool = False

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        evaluator: Evaluator | None = None,
    ):
        super().__init__()
        # The method's settings (the whole __init__ chain's: KD's alpha..., RTD's weights) go into every
        # checkpoint, so Method.load_from_checkpoint(ckpt, student=..., teacher=...) rebuilds the module;
        # models and factories are passed in, not settings.
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "scheduler", "evaluator"], logger=False)
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
        self._rng_to_restore: dict | None = None  # from a checkpoint: see on_train_batch_start
        self.tokens_trained: torch.Tensor | None = None  # since this process started (training_step)
        # The offline teacher outputs of the training split (rtd_lab.teacher_cache), when the run has them.
        self.teacher_cache = None

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """Range checks of the method's settings (the config's ``method:`` block) that need no model:
        run before any data, model or cache is built (``rtd_lab.tasks.preflight``) and by the
        constructor. A subclass checks the fields it adds and calls ``super().check_settings``."""

    # ---- the one thing a method defines -------------------------------------------------------
    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        """The losses of ``batch``; ``n`` holds the denominators of their means (pass them on)."""
        raise NotImplementedError

    # ---- hooks shared code reads ----------------------------------------------------------------
    def transition_projection(self) -> nn.Module | None:
        """The map from student to teacher step transitions this method learned (RTD's g), or None:
        the transition diagnostic then fits one by least squares."""
        return None

    # ---- shared plumbing ----------------------------------------------------------------------
    def item_counts(self, batch: dict) -> ItemCounts:
        """The batch's item counts (``ItemCounts``), what each loss divides its sum by.

        A loss is a mean over a batch's items (tokens, chains): sum / count. Under DDP each rank holds
        part of the global batch and the gradients are averaged over ranks, so dividing by the local
        count would weight a rank's items by how few it has. Dividing by (global count / world size)
        instead makes the averaged gradient that of sum_all / count_all, the single-process loss at
        the same global batch: one all-reduce of the four counts per training batch. Only while
        training: validation and evaluation run on one rank's full data, and an all-reduce on one
        rank alone would hang. On one process the counts are the batch's own.
        """
        labels, boundary = batch["labels"], batch["boundary_mask"]  # every batch has them (data.batch)
        local = torch.stack(
            [
                (labels[:, 1:] != IGNORE_INDEX).sum(),
                batch["attention_mask"].bool().sum(),
                boundary.any(dim=1).sum(),
                (boundary[:, 1:] & boundary[:, :-1]).any(dim=1).sum(),
            ]
        )
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "world_size", 1) > 1 and trainer.training:
            local = trainer.strategy.reduce(local.float(), reduce_op="sum") / trainer.world_size
        return ItemCounts(*local.unbind())

    def student_forward(self, batch: dict, hidden: bool = False):
        # No attention mask: training batches are right-padded, so under causal attention no real
        # token ever sees a pad and every real position's output is the same with or without it;
        # the padding mask only costs time (about a quarter of a CPU step at this size).
        # Pad positions' outputs differ, but no label or boundary ever points at one.
        return self.student(input_ids=batch["input_ids"], output_hidden_states=hidden, use_cache=False)

    def teacher_forward(
        self, batch: dict, boundaries: bool = False, hidden_layers: list[int] | None = None
    ) -> TeacherOutput:
        """The one provider of the teacher's outputs: for a training-split batch when the run has an
        offline cache (``rtd_lab.teacher_cache``, which holds the training split), read by the
        batch's rows; otherwise a forward pass of the frozen teacher."""
        if self.teacher_cache is not None and batch.get("split") == "train":
            out = cached_outputs(self.teacher_cache, batch, hidden_layers)
            return out if boundaries else out._replace(boundary_hidden=None)
        return self.teacher(
            batch["input_ids"], boundary_pos=batch["boundary_pos"] if boundaries else None, hidden_layers=hidden_layers
        )

    @torch.no_grad()
    def sample_student(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, temperature: float) -> torch.Tensor:
        """The student's sampled completions for left-padded prompts, (B, P + N) as ``generate`` returns
        them (``rtd_lab.models.decode``: its draws, without its per-token overhead), drawn in eval mode.
        For the methods that train on the student's own samples (step_reward, on_policy)."""
        if self.evaluator is None:
            raise ValueError(
                f"method {type(self).__name__} samples the student: it needs the run's evaluator (tokenizer, benchmark)"
            )
        tokenizer = self.evaluator.tokenizer
        was_training = self.student.training
        self.student.eval()
        out = decode(
            self.student,
            prompt_ids,
            prompt_mask,
            self.evaluator.benchmark.max_completion_tokens(),
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            do_sample=True,
            temperature=temperature,
        )
        self.student.train(was_training)
        return out

    def cache_request(self) -> dict:
        """What the offline teacher cache must hold for this method (``rtd_lab.teacher_cache.CacheSpec``)."""
        return {"temperature": getattr(getattr(self, "kd", None), "temperature", 1.0), "hint_layers": ()}

    def logs_this_step(self, stage: str) -> bool:
        """Whether Lightning writes this step's logged values (training: every log_every_n_steps).

        A training value logged on any other step only overwrites the last one, yet each
        ``self.log`` costs a result-collection update, and with ``sync_dist`` an all-reduce under DDP;
        logging only on the steps Lightning writes gives the loggers the same numbers without them.
        (The progress bar's loss is then refreshed at the same interval.)
        """
        trainer = self._trainer
        if stage != "train" or trainer is None:
            return True
        # Lightning's own test, which it makes after the step but before counting it, so it gives the
        # same answer here; private API, hence the fallback to logging every step.
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True) or trainer.fast_dev_run)

    def use_boundary_classifier(self, clf: nn.Module, on_batches: bool = True) -> None:
        """The boundary classifier ``clf`` on the teacher's states: with ``on_batches`` it finds every
        training and validation batch's boundaries (data.boundaries=learned_online); a method that
        ``needs_boundary_classifier`` reads it (``boundary_classifier``) for text of its own. A frozen
        scorer, as the PRM: not a registered submodule, so neither trained nor checkpointed."""
        self.__dict__["_boundary_classifier"] = clf.to(self.device).eval()
        self.__dict__["_boundaries_on_batches"] = on_batches

    @property
    def boundary_classifier(self) -> nn.Module | None:
        """The run's boundary classifier (``use_boundary_classifier``) on this module's device, or None."""
        clf = self.__dict__.get("_boundary_classifier")
        if clf is not None and next(clf.parameters()).device != self.device:
            clf.to(self.device)
        return clf

    def with_step_boundaries(self, batch: dict) -> dict:
        """The batch with the boundary classifier's boundaries, found now on the teacher's states, when
        the run has one for its batches (learned_online); otherwise as it is. Every loss on training
        or validation batches reads its boundaries through this (the curriculum's checks too)."""
        clf = self.boundary_classifier
        if clf is None or not self.__dict__.get("_boundaries_on_batches", True):
            return batch
        pos, mask = online_boundaries(clf, self.teacher.model, batch)
        return {**batch, "boundary_pos": pos, "boundary_mask": mask}

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        batch = self.with_step_boundaries(batch)
        losses = self.compute_losses(batch, self.item_counts(batch))
        if stage == "train" and not torch.isfinite(losses["loss"].detach()).all():
            # Stop at once: every later step would train on NaN and the run would only fail at the end.
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if v.numel() == 1)
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step} ({parts}): check method.* and optim.* "
                "(a weight or learning rate too large) and the teacher"
            )
        if not self.logs_this_step(stage):
            return losses["loss"]
        bs = batch["input_ids"].size(0)
        for name, value in losses.items():
            if name == "loss":
                key = f"{stage}/loss"
            else:
                key = f"{stage}/{name}" if name in self.diagnostics else f"{stage}/loss_{name}"
            # Synced (a no-op on one process): under DDP a rank's training loss is its share
            # (ReasoningModule.item_counts), and the mean over ranks is the global batch's loss.
            self.log(key, value.detach(), batch_size=bs, prog_bar=name == "loss", sync_dist=True)
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Tokens this process trained on (for throughput): a device tensor, so no sync per step.
        seen = batch["attention_mask"].sum()
        self.tokens_trained = seen if self.tokens_trained is None else self.tokens_trained + seen
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
        # The global RNGs drive the shuffle of every new epoch and any sampling in a training step:
        # a resumed run restores them to continue exactly as the uninterrupted one (tests/test_resume.py).
        checkpoint["rng_states"] = rng_states()
        # What the loggers buffered so far goes to disk with the checkpoint: a run killed after it and
        # resumed from it keeps every metric logged up to it (CSVLogger writes every 100 steps otherwise).
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                logger.save()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # A checkpoint taken at an epoch's end: the next epoch's loader draws its shuffle seed after this.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A checkpoint taken mid-epoch: re-creating the loader's iterator drew from the RNG, which the
        # uninterrupted run did not do at this point; restore again before the first resumed step.
        if self._rng_to_restore is not None:
            if batch_idx > 0:
                set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # student + method projections
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
