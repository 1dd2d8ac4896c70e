"""Learning-rate schedules shared by every method, the teacher and the student's pretraining."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(warmup_ratio: float, min_lr_ratio: float, field: str) -> None:
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"{field}.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"{field}.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of training, then cosine decay to ``min_lr_ratio`` of the peak
    (the RTD paper's "cosine annealing")."""
    _check(warmup_ratio, min_lr_ratio, "optim.scheduler")
    total = max(int(total_steps), 1)
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_stable_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.02,
    decay_ratio: float = 0.2,
    min_lr_ratio: float = 0.0,
    field: str = "optim.scheduler",
) -> LambdaLR:
    """Warm-up / stable / decay: linear warm-up over ``warmup_ratio`` of training, the peak rate until
    the last ``decay_ratio`` of it, then linear decay to ``min_lr_ratio`` of the peak.

    Why not cosine: a cosine schedule lowers the rate from the first step after warm-up, so where
    learning has plateaus of random length (these small models learn a lookup all at once, after a
    wait) a run's result depends on how much had been learned when the rate ran out. Holding the peak
    rate until a fixed, late point lets every run get past the plateau first; the decay then only
    anneals what was learned.
    """
    _check(warmup_ratio, min_lr_ratio, field)
    if not 0 <= decay_ratio <= 1 - warmup_ratio:
        raise ValueError(f"{field}.decay_ratio must be in [0, 1 - warmup_ratio], got {decay_ratio}")
    total = max(int(total_steps), 1)
    warmup = int(warmup_ratio * total)
    decay_start = total - int(decay_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start) / max(total - decay_start, 1), 1.0)
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return LambdaLR(optimizer, factor)


class PlateauDecay:
    """The learning-rate factor of ``warmup_stable_decay_on_plateau``: a callable object, so ``LambdaLR``
    saves its ``__dict__`` (``decay_start`` with it) in checkpoints and a resumed run keeps its decay.

    ``observe`` receives the validation curve (``rtd_lab.learning_curve.LearningCurve`` calls it after each
    check) and starts the decay once the curve has stalled; ``finished`` says when training should stop.
    """

    def __init__(
        self, total: int, warmup: int, decay_steps: int, earliest: int, patience: int, min_delta: float, floor: float
    ):
        self.total, self.warmup, self.decay_steps = total, warmup, decay_steps
        self.earliest, self.patience, self.min_delta, self.floor = earliest, patience, min_delta, floor
        self.decay_start: int | None = None  # set by the plateau test; None: decay_steps before the cap

    def start(self) -> int:
        """The step the decay starts at: where the plateau test fired, else ``decay_steps`` before the cap."""
        return self.decay_start if self.decay_start is not None else self.total - self.decay_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        start = self.start()
        if step < start:
            return 1.0
        return max(self.floor, 1.0 - (1.0 - self.floor) * (step - start) / self.decay_steps)

    def observe(self, step: int, values: list[float]) -> None:
        """Start the decay at ``step`` when the best of the last ``patience`` checks does not beat the best
        before them by ``min_delta`` (early stopping's test, on the stable phase only)."""
        if self.decay_start is not None or step < self.earliest or step >= self.start():
            return
        recent, before = values[-self.patience :], values[: -self.patience]
        if before and max(recent) < max(before) + self.min_delta:
            self.decay_start = step

    @property
    def reason(self) -> str:
        """Why the decay starts where it does: "plateau" (the curve stalled) or "cap" (``max_steps`` came first)."""
        return "plateau" if self.decay_start is not None else "cap"

    def finished(self, step: int) -> bool:
        return step >= self.start() + self.decay_steps


PLATEAU_FIELDS = ("warmup_steps", "decay_steps", "earliest_decay", "patience", "min_delta")


def check_plateau_settings(settings: Mapping, total_steps: int | None, field: str = "optim.scheduler") -> None:
    """The fields of ``warmup_stable_decay_on_plateau`` given in ``settings`` (the others take its
    defaults), and that its warm-up and decay fit in ``total_steps`` (None: not known yet). Called by the
    schedule and, before anything is built, by ``rtd_lab.tasks.preflight``."""
    defaults = inspect.signature(warmup_stable_decay_on_plateau).parameters
    value_of = {k: settings.get(k, defaults[k].default) for k in PLATEAU_FIELDS}
    for name, low in (("warmup_steps", 1), ("decay_steps", 1), ("earliest_decay", 0), ("patience", 1)):
        value = value_of[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{field}.{name} must be an integer >= {low}, got {value!r}")
    min_delta = value_of["min_delta"]
    if isinstance(min_delta, bool) or not isinstance(min_delta, int | float) or not 0 <= min_delta < 1:
        raise ValueError(f"{field}.min_delta must be in [0, 1), got {min_delta!r}")
    warmup, decay = value_of["warmup_steps"], value_of["decay_steps"]
    if total_steps is not None and warmup + decay > total_steps:
        raise ValueError(
            f"{field}: warmup_steps + decay_steps ({warmup} + {decay}) exceed the {total_steps} training "
            "steps (trainer.max_steps)"
        )


def warmup_stable_decay_on_plateau(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 40,
    decay_steps: int = 400,
    earliest_decay: int = 1500,
    patience: int = 4,
    min_delta: float = 0.01,
    min_lr_ratio: float = 0.0,
    field: str = "optim.scheduler",
) -> LambdaLR:
    """Warm-up / stable **until the validation curve stalls** / decay, then stop: each run trains to its
    own plateau instead of a fixed budget, with ``total_steps`` (the trainer's ``max_steps``) as a cap.

    Why: a fixed budget that is past one method's plateau can stop another inside its climb (measured on
    the paper table at 2,000 steps: the validation curve had flattened in every standard KD and cot_ft
    run, in 4 of 10 FitNets and 4 of 10 step_reward runs). A comparison at a fixed budget then measures
    learning speed, not what a method transfers. The test is early stopping's,
    applied to the peak-rate phase: after step ``earliest_decay``, once the best validation chain
    accuracy of the last ``patience`` checks does not beat the best before them by ``min_delta``, the
    rate decays linearly to ``min_lr_ratio`` over ``decay_steps`` (which anneals what was learned) and
    training stops. A run that never stalls starts its decay ``decay_steps`` before the cap; its curve
    records ``decay_reason: cap``, and it does not count as converged.

    ``earliest_decay`` keeps the decay out of the first steps, where a curriculum's early stages hold the
    validation curve flat by design. The curve comes from ``callbacks.learning_curve``, which is required.
    """
    _check(0.0, min_lr_ratio, field)
    total = max(int(total_steps), 1)
    settings = dict(
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        earliest_decay=earliest_decay,
        patience=patience,
        min_delta=min_delta,
    )
    check_plateau_settings(settings, total, field)
    schedule = PlateauDecay(total, warmup_steps, decay_steps, earliest_decay, patience, min_delta, min_lr_ratio)
    return LambdaLR(optimizer, schedule)
