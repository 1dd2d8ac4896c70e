"""Standard knowledge distillation (seed 001 baseline): logit matching at T = 4.0, alpha = 0.7.

L = alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE      on trace/answer tokens
"""

from __future__ import annotations

import torch

from rtd_lab.losses import kd_loss
from rtd_lab.methods.base import ReasoningModule


def check_kd(alpha: float, temperature: float) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"method.alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"method.temperature must be > 0, got {temperature}")


class StandardKD(ReasoningModule):
    def __init__(self, *args, alpha: float = 0.7, temperature: float = 4.0, **kwargs):
        super().__init__(*args, **kwargs)
        check_kd(alpha, temperature)
        self.alpha = alpha
        self.temperature = temperature

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch)
        t = self.teacher(batch["input_ids"])
        kd = kd_loss(s.logits[:, :-1], t.logits[:, :-1], batch["labels"][:, 1:], self.alpha, self.temperature)
        return {"loss": kd.loss, "kd": kd.loss.detach(), "kl": kd.kl.detach(), "ce": kd.ce.detach()}
