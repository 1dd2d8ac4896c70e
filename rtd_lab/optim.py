"""Learning-rate schedules shared by every method, the teacher and the student's pretraining."""

from __future__ import annotations

import math

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
