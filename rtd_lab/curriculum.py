"""The depth curriculum of the RTD paper: train on 1-step chains first, then progressively longer ones.

Stage s trains on the chains of depth <= ``stages[s]`` (earlier depths stay in the mix, so a stage
does not forget what the previous one learned) and ends when the method's validation loss on that
stage's validation chains falls below a teacher-calibrated threshold, or after
``max_steps_per_stage`` steps, whichever comes first. The last stage (all depths) runs to the end
of training.

Teacher calibration, exactly. For stage s, on its validation chains (depth <= stages[s]):

    chance_s    = mean over chains b and pairings r of L(v_{b+r}, v_b)
                                      the stage metric's loss when each chain's teacher vectors
                                      (boundary states for "align", transitions h_{i+1} - h_i for
                                      "coherence") are predicted by the teacher's vectors of another
                                      chain at the same step (``losses.other_chain_baseline``)
    threshold_s = threshold_ratio * chance_s

The paper's reason for the curriculum is that "early-training representations are too poorly
aligned for transition vectors to carry meaningful directional signal". A student's transition
carries directional signal about *its* chain when it predicts the teacher's transition on that
chain better than a real teacher transition of another chain does: that is chance in the sense of a
permutation test (the pairing of chains is shuffled), and ``threshold_ratio`` 1 ends a stage as soon
as the student beats it; before that the next depth's transitions would be noise. The stricter
level ``chance: mean_direction`` (the loss of the teacher's mean direction, the best single vector
for all chains) is not one stages can meet: the teacher's last-layer states share one large
direction, so for the one transition of 2-step chains on the default benchmark it is 1.7e-4, and a
student is still 1.1x above it after its 150-step cap (experiments/calibration) — the curriculum
was then a fixed schedule. The metric is ``metric`` ("coherence", the paper's) when the stage has
chains of two or more steps; a stage of 1-step chains has no transition, so it uses
``first_stage_metric`` ("align") the same way. Calibration runs once, at the start of training,
with the frozen teacher and the validation split.

Every check logs ``curriculum/stage``, ``curriculum/val_metric`` and ``curriculum/threshold``; a
stage's end is logged with its step and its reason ("threshold" or "step cap"), and the stage
history goes to ``results.json``. The state is in Lightning checkpoints, so a resumed run
continues in the stage it was in.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rtd_lab.data.batch import move_batch
from rtd_lab.losses import align_loss, coherence_loss, mean_direction_baseline, other_chain_baseline, transitions

log = logging.getLogger(__name__)
METRICS = ("align", "coherence")
CHANCE = {"other_chain": other_chain_baseline, "mean_direction": mean_direction_baseline}


@dataclass
class StageRecord:
    stage: int  # 1-based
    max_depth: int
    start_step: int
    end_step: int | None = None  # None: the last stage, or training ended first
    reason: str | None = None  # "threshold" | "step cap"
    metric: str | None = None
    value: float | None = None  # the stage metric at the end
    threshold: float | None = None


class DepthCurriculum(Callback):
    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """The constructor's checks, before any data or model is built (``rtd_lab.tasks.preflight``)."""
        cls(**settings)

    def __init__(
        self,
        stages: list[int] | None = None,
        metric: str | None = "coherence",
        first_stage_metric: str = "align",
        threshold_ratio: float = 1.0,
        chance: str = "other_chain",
        check_every_n_steps: int = 25,
        min_steps_per_stage: int = 25,
        max_steps_per_stage: int = 150,
    ):
        if metric is not None and metric not in METRICS:
            raise ValueError(f"curriculum.metric must be one of {list(METRICS)} or null, got {metric!r}")
        if first_stage_metric not in METRICS:
            raise ValueError(
                f"curriculum.first_stage_metric must be one of {list(METRICS)}, got {first_stage_metric!r}"
            )
        if chance not in CHANCE:
            raise ValueError(f"curriculum.chance must be one of {list(CHANCE)}, got {chance!r}")
        if not 0 < threshold_ratio:
            raise ValueError(f"curriculum.threshold_ratio must be > 0, got {threshold_ratio}")
        if check_every_n_steps < 1:
            raise ValueError(f"curriculum.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if not 0 <= min_steps_per_stage <= max_steps_per_stage:
            raise ValueError(
                "curriculum needs 0 <= min_steps_per_stage <= max_steps_per_stage, "
                f"got {min_steps_per_stage} and {max_steps_per_stage}"
            )
        self.stages = list(stages) if stages is not None else None
        self.metric = metric
        self.first_stage_metric = first_stage_metric
        self.threshold_ratio = float(threshold_ratio)
        self.chance_fn = CHANCE[chance]
        self.check_every = check_every_n_steps
        self.min_steps = min_steps_per_stage
        self.max_steps = max_steps_per_stage
        self.stage = 0  # 0-based index into self.stages
        self.stage_start = 0
        self.thresholds: list[float | None] = []
        self.chance: list[float | None] = []
        self.history: list[StageRecord] = []
        self.datamodule = None

    # ---- set-up -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "set_max_train_depth"):
            raise ValueError("curriculum=depth needs the ReasoningDataModule (stage filtering)")
        depths = dm.train_depths
        if self.stages is None:
            self.stages = list(depths)
        if not self.stages or self.stages != sorted(set(self.stages)) or not set(self.stages) <= set(depths):
            raise ValueError(
                f"curriculum.stages must be increasing depths of the benchmark {depths}, got {self.stages}"
            )
        if self.stages[-1] != max(depths):
            raise ValueError(
                f"curriculum.stages must end at the deepest chains (depth {max(depths)}), got {self.stages}: "
                "the last stage trains on every depth"
            )
        self.datamodule = dm
        dm.set_max_train_depth(self.stages[self.stage])

    def stage_metric(self, stage: int) -> str | None:
        if self.metric is None:
            return None
        return self.metric if self.stages[stage] >= 2 else self.first_stage_metric

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history:  # resumed from a checkpoint: calibration and history came with it
            self.datamodule.set_max_train_depth(self.stages[self.stage])
            return
        self.thresholds, self.chance = [], []
        for s in range(len(self.stages) - 1):  # the last stage never ends early: no threshold
            metric = self.stage_metric(s)
            chance = self.calibrate(pl_module, s, metric) if metric else None
            self.chance.append(chance)
            self.thresholds.append(None if chance is None else self.threshold_ratio * chance)
        self.history = [StageRecord(1, self.stages[0], trainer.global_step, metric=self.stage_metric(0))]
        self.stage_start = trainer.global_step
        plan = ", ".join(
            f"depth<={d}: {self.stage_metric(s)} < {self.thresholds[s]:.3g}"
            if s < len(self.thresholds) and self.thresholds[s] is not None
            else f"depth<={d}: " + ("to the end" if s == len(self.stages) - 1 else "step cap only")
            for s, d in enumerate(self.stages)
        )
        log.info("curriculum: %d stages (%s); cap %d steps a stage", len(self.stages), plan, self.max_steps)

    @torch.no_grad()
    def calibrate(self, pl_module: L.LightningModule, stage: int, metric: str) -> float | None:
        """``chance_s`` of the module docstring, from the frozen teacher on the stage's validation chains.

        None when those chains have no boundary (or transition) at all, e.g. with a segmenter that
        finds none: the stage then ends at its step cap.
        """
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None:
            raise ValueError(
                f"curriculum=depth calibrates its thresholds with the teacher, and method "
                f"{type(pl_module).__name__} has none: use curriculum=none or curriculum.metric=null"
            )
        loader = self.datamodule.stage_val_dataloader(self.stages[stage])
        first = pl_module.with_step_boundaries(move_batch(next(iter(loader)), pl_module.device))
        # In eval mode, as the checks run: a training-mode call would take an on-policy method's
        # sampling path (drawing from the RNG that orders the run) for a probe of the loss's names.
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            reported = pl_module.compute_losses(first, pl_module.item_counts(first))
        pl_module.train(was_training)
        if metric not in reported:
            raise ValueError(
                f"curriculum=depth ends a stage on the validation '{metric}' loss, which method "
                f"{type(pl_module).__name__} does not compute (it reports {sorted(reported)}): use "
                "curriculum=none, or curriculum.metric=null for stages that end at their step cap"
            )
        targets, masks = [], []
        for batch in loader:
            batch = pl_module.with_step_boundaries(move_batch(batch, pl_module.device))
            h = teacher(batch["input_ids"], boundary_pos=batch["boundary_pos"]).boundary_hidden  # (B, K, D_T)
            mask = batch["boundary_mask"]
            if metric == "coherence":
                h, mask = transitions(h, mask)
            targets.append(h)
            masks.append(mask)
        width = max(t.size(1) for t in targets)  # batches differ in K: pad to the widest
        target = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.size(1))) for t in targets])
        mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.size(1))) for m in masks])
        if not mask.any():
            log.warning("curriculum: stage %d's validation chains have no %s entry: step cap only", stage + 1, metric)
            return None
        loss_fn = coherence_loss if metric == "coherence" else align_loss
        return float(self.chance_fn(target, mask, loss_fn))

    # ---- the stage loop -----------------------------------------------------------------------
    @torch.no_grad()
    def stage_value(self, pl_module: L.LightningModule, metric: str) -> float:
        """The method's ``metric`` loss over the current stage's validation chains (chain-weighted mean)."""
        was_training = pl_module.training
        pl_module.eval()
        total, n = 0.0, 0
        for batch in self.datamodule.stage_val_dataloader(self.stages[self.stage]):
            batch = pl_module.with_step_boundaries(move_batch(batch, pl_module.device))
            size = batch["input_ids"].size(0)
            total += float(pl_module.compute_losses(batch, pl_module.item_counts(batch))[metric]) * size
            n += size
        pl_module.train(was_training)
        return total / n

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stage >= len(self.stages) - 1:
            return
        steps = trainer.global_step - self.stage_start
        if steps < self.min_steps or (steps % self.check_every and steps < self.max_steps):
            return
        metric, threshold = self.stage_metric(self.stage), self.thresholds[self.stage]
        value = self.stage_value(pl_module, metric) if metric else None
        pl_module.log("curriculum/stage", float(self.stage + 1))
        if value is not None:
            pl_module.log("curriculum/val_metric", value)
        if threshold is not None:
            pl_module.log("curriculum/threshold", threshold)
        if value is not None and threshold is not None and value < threshold:
            self.advance(trainer, "threshold", value)
        elif steps >= self.max_steps:
            self.advance(trainer, "step cap", value)

    def advance(self, trainer: L.Trainer, reason: str, value: float | None) -> None:
        record = self.history[-1]
        record.end_step, record.reason, record.value = trainer.global_step, reason, value
        record.threshold = self.thresholds[self.stage]
        log.info(
            "curriculum: stage %d (depth <= %d) ended at step %d after %d steps, %s (%s = %s, threshold %s)",
            record.stage,
            record.max_depth,
            record.end_step,
            record.end_step - record.start_step,
            reason,
            record.metric,
            "n/a" if value is None else f"{value:.4g}",
            "n/a" if record.threshold is None else f"{record.threshold:.4g}",
        )
        self.stage += 1
        self.stage_start = trainer.global_step
        self.datamodule.set_max_train_depth(self.stages[self.stage])
        self.history.append(
            StageRecord(
                self.stage + 1, self.stages[self.stage], trainer.global_step, metric=self.stage_metric(self.stage)
            )
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("curriculum stages:\n%s", self.table())

    def table(self) -> str:
        """The stages as a markdown table: steps, metric at the end, threshold, why each ended."""
        lines = ["| stage | depths | steps | metric | value | threshold | ended by |", "|---|---|---|---|---|---|---|"]
        for r in self.history:
            steps = "–" if r.end_step is None else str(r.end_step - r.start_step)
            value = "–" if r.value is None else f"{r.value:.4g}"
            threshold = "–" if r.threshold is None else f"{r.threshold:.4g}"
            lines.append(
                f"| {r.stage} | <= {r.max_depth} | {steps} (from step {r.start_step}) | {r.metric or '–'} | {value} | "
                f"{threshold} | {r.reason or 'end of training'} |"
            )
        return "\n".join(lines)

    def summary(self) -> dict:
        return {
            "stages": self.stages,
            "threshold_ratio": self.threshold_ratio,
            "chance": self.chance,
            "thresholds": self.thresholds,
            "history": [asdict(r) for r in self.history],
        }

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage_start": self.stage_start, **self.summary()}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.stage_start = state["stage"], state["stage_start"]
        self.stages, self.chance, self.thresholds = state["stages"], state["chance"], state["thresholds"]
        self.history = [StageRecord(**r) for r in state["history"]]
