"""Learning-rate schedule shared by every method (the seed: cosine annealing)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of training, then cosine decay to ``min_lr_ratio`` of the peak."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"method.scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    total = max(int(total_steps), 1)
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
