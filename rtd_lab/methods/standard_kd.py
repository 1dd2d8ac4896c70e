"""Standard knowledge distillation (seed 001 baseline): logit matching at T = 4.0, alpha = 0.7.

L = alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE      on trace/answer tokens
"""

from __future__ import annotations

import torch

from rtd_lab.losses import DIVERGENCES, kd_loss
from rtd_lab.methods.base import ReasoningModule


def check_kd(alpha: float, temperature: float, divergence: str = "forward_kl", beta: float = 0.5) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"method.alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"method.temperature must be > 0, got {temperature}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"method.divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    if not 0 <= beta <= 1:
        raise ValueError(f"method.beta must be in [0, 1], got {beta}")


class StandardKD(ReasoningModule):
    def __init__(
        self,
        *args,
        alpha: float = 0.7,
        temperature: float = 4.0,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        check_kd(alpha, temperature, divergence, beta)
        self.alpha, self.temperature, self.divergence, self.beta = alpha, temperature, divergence, beta

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch)
        t = self.teacher(batch["input_ids"])
        kd = kd_loss(
            s.logits[:, :-1],
            t.logits[:, :-1],
            batch["labels"][:, 1:],
            self.alpha,
            self.temperature,
            self.divergence,
            self.beta,
        )
        return {"loss": kd.loss, "kd": kd.loss.detach(), "div": kd.div.detach(), "ce": kd.ce.detach()}
