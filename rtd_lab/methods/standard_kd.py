"""Standard knowledge distillation (seed 001 baseline): logit matching at T = 4.0, alpha = 0.7.

    L = alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE      on trace/answer tokens

``method.divergence`` swaps the KL for reverse KL or generalized JSD(beta) (``losses.token_divergence``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtd_lab.losses import DIVERGENCES, KDLoss, kd_loss
from rtd_lab.methods.base import ReasoningModule


@dataclass(frozen=True)
class LogitKD:
    """The L_KD term every KD-based method shares, its settings validated once.

    Called with unshifted (B, T, V) logits and (B, T) labels; it does the causal shift.
    """

    alpha: float = 0.7
    temperature: float = 4.0
    divergence: str = "forward_kl"
    beta: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"method.divergence must be one of {list(DIVERGENCES)}, got {self.divergence!r}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"method.beta must be in [0, 1], got {self.beta}")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> KDLoss:
        return kd_loss(
            student_logits[:, :-1],
            teacher_logits[:, :-1],
            labels[:, 1:],
            self.alpha,
            self.temperature,
            self.divergence,
            self.beta,
        )


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
        self.kd = LogitKD(alpha, temperature, divergence, beta)

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch)
        t = self.teacher(batch["input_ids"])
        kd = self.kd(s.logits, t.logits, batch["labels"])
        return {"loss": kd.loss, "kd": kd.loss.detach(), "div": kd.div.detach(), "ce": kd.ce.detach()}
