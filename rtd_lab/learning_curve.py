"""The validation learning curve: greedy chain accuracy on the validation split during training.

Two questions a comparison of methods must keep apart:

* **what a method transfers**: the accuracy a student converges to (the test metrics at the end of a
  run trained past its plateau; ``converged`` below says whether the curve had flattened), and
* **how fast it transfers it** (sample efficiency): the area under the validation learning curve,
  ``aulc`` = the trapezoid area under chain accuracy over training steps, from step 0 (the student
  as it starts) to the last step, divided by the number of steps: 1.0 is a student right from the
  first step, and two methods that end equal but learn at different speeds differ here. When runs
  train for different numbers of steps (a schedule that decays on the plateau) the area is taken
  over the steps every run shares, up to the schedule's ``earliest_decay``: a longer run must not
  score higher for the extra steps it spent at its plateau.

Every ``every_n_steps`` optimizer steps (and at steps 0 and the last) the student generates greedily
for the validation prompts; the curve goes to ``results.json`` (``student.learning_curve``), to the
loggers as ``val/chain_acc`` and into checkpoints, so a resumed run continues it.

Converged: with ``optim.scheduler`` = ``warmup_stable_decay_on_plateau`` the run trains until this curve
stalls (each check is handed to the schedule, which starts its decay and then stops the run), and a
run converged when the plateau test, not the step cap, ended its stable phase. With a fixed schedule,
when its last ``plateau_window`` checks lie within ``plateau_tolerance`` of each other.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from rtd_lab.optim import PlateauDecay

log = logging.getLogger(__name__)


def aulc(steps: list[int], values: list[float]) -> float | None:
    """Trapezoid area under ``values`` over ``steps``, divided by the step range (a mean accuracy)."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return None
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum() / (x[-1] - x[0]))


def plateaued(values: list[float], window: int, tolerance: float) -> bool:
    """Whether the last ``window`` checks lie within ``tolerance`` of each other (the curve is flat)."""
    if len(values) < window:
        return False
    tail = values[-window:]
    return max(tail) - min(tail) <= tolerance


class LearningCurve(Callback):
    def __init__(self, every_n_steps: int = 250, plateau_window: int = 3, plateau_tolerance: float = 0.03):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"callbacks.learning_curve.every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if not isinstance(plateau_window, int) or plateau_window < 2:
            raise ValueError(f"callbacks.learning_curve.plateau_window must be an integer >= 2, got {plateau_window!r}")
        if not 0 <= plateau_tolerance <= 1:
            raise ValueError(f"callbacks.learning_curve.plateau_tolerance must be in [0, 1], got {plateau_tolerance}")
        self.every = every_n_steps
        self.window = plateau_window
        self.tolerance = plateau_tolerance
        self.steps: list[int] = []
        self.chain_acc: list[float] = []
        self.schedule: PlateauDecay | None = None  # a schedule that decays on this curve's plateau

    @staticmethod
    def _plateau_schedule(trainer: L.Trainer) -> PlateauDecay | None:
        for config in trainer.lr_scheduler_configs:
            for factor in getattr(config.scheduler, "lr_lambdas", []):
                if isinstance(factor, PlateauDecay):
                    return factor
        return None

    def _measure(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = trainer.global_step
        if self.steps and self.steps[-1] == step:
            return
        evaluator, dm = module.evaluator, trainer.datamodule
        if evaluator is None or dm is None:
            return
        metrics, _ = evaluator.evaluate(module.student, dm.val_dataloader(), "val curve")
        self.steps.append(step)
        self.chain_acc.append(metrics["chain_acc"])
        if self.schedule is not None:
            self.schedule.observe(step, self.chain_acc)
        if trainer.is_global_zero:  # straight to the loggers: Lightning's self.log is closed at on_train_end
            for logger in trainer.loggers:
                logger.log_metrics({"val/chain_acc": metrics["chain_acc"]}, step=step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.schedule = self._plateau_schedule(trainer)
        if not self.steps:  # a resumed run brings its curve in the checkpoint
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._measure(trainer, pl_module)
        if self.schedule is not None and self.schedule.finished(trainer.global_step):
            trainer.should_stop = True  # the decay after the plateau is done

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._measure(trainer, pl_module)

    def summary(self) -> dict:
        horizon = self.schedule.earliest if self.schedule is not None else None
        shared = [(t, v) for t, v in zip(self.steps, self.chain_acc, strict=True) if horizon is None or t <= horizon]
        summary = {
            "steps": self.steps,
            "chain_acc": self.chain_acc,
            "aulc": aulc([t for t, _ in shared], [v for _, v in shared]),
            "converged": plateaued(self.chain_acc, self.window, self.tolerance),
            "plateau": {"window": self.window, "tolerance": self.tolerance},
        }
        if self.schedule is not None:
            s = self.schedule
            summary["converged"] = s.reason == "plateau"
            summary["plateau"] = {"patience": s.patience, "min_delta": s.min_delta, "earliest": s.earliest}
            summary |= {"decay_start": s.start(), "decay_reason": s.reason, "aulc_steps": horizon}
        return summary

    def state_dict(self) -> dict:
        return {"steps": self.steps, "chain_acc": self.chain_acc}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.chain_acc = list(state["steps"]), list(state["chain_acc"])
