"""Standard knowledge distillation (a baseline of the RTD paper): logit matching at T = 4.0, alpha = 0.7.

    L = alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE      on trace/answer tokens

``method.divergence`` swaps the KL for reverse KL or generalized JSD(beta) (``losses.token_divergence``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rtd_lab.losses import DIVERGENCES, KDLoss, kd_loss, sparse_kd_loss
from rtd_lab.methods.base import ItemCounts, ReasoningModule
from rtd_lab.models.teacher import SparseLogits


@dataclass(frozen=True)
class LogitKD:
    """The L_KD term every KD-based method shares, its settings validated once.

    Called with unshifted (B, T, V) logits and (B, T) labels; it does the causal shift. The teacher's
    logits are dense (online) or the offline cache's top-k (``SparseLogits``, ``losses.sparse_kd_loss``).
    """

    alpha: float = 0.7
    temperature: float = 4.0
    divergence: str = "forward_kl"
    beta: float = 0.5
    chunk_size: int | None = None  # dense KD over this many positions at a time (losses.kd_loss)

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"method.divergence must be one of {list(DIVERGENCES)}, got {self.divergence!r}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"method.beta must be in [0, 1], got {self.beta}")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or self.chunk_size < 1):
            raise ValueError(f"method.chunk_size must be an integer >= 1 or null, got {self.chunk_size}")

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | SparseLogits,
        labels: torch.Tensor,
        num_items: torch.Tensor | None = None,
    ) -> KDLoss:
        settings = (self.alpha, self.temperature, self.divergence, self.beta)
        if isinstance(teacher_logits, SparseLogits):
            t = teacher_logits
            return sparse_kd_loss(
                student_logits[:, :-1],
                t.values[:, :-1],
                t.indices[:, :-1],
                t.lse[:, :-1],
                labels[:, 1:],
                *settings,
                tail=t.tail,
                num_items=num_items,
            )
        return kd_loss(
            student_logits[:, :-1],
            teacher_logits[:, :-1],
            labels[:, 1:],
            *settings,
            num_items=num_items,
            chunk_size=self.chunk_size,
        )


class StandardKD(ReasoningModule):
    def __init__(
        self,
        *args,
        alpha: float = 0.7,
        temperature: float = 4.0,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.kd = LogitKD(alpha, temperature, divergence, beta, chunk_size)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        LogitKD(**{f.name: settings[f.name] for f in fields(LogitKD) if f.name in settings})

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch)
        t = self.teacher_forward(batch)
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)
        return {"loss": kd.loss, "kd": kd.loss.detach(), "div": kd.div.detach(), "ce": kd.ce.detach()}
