"""Depth-stratified reasoning accuracy as a torchmetrics Metric (sums reduce across DDP ranks)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ReasoningAccuracy(Metric):
    """Final-answer, step and full-chain accuracy, overall and for each reasoning depth.

    ``compute`` returns ``{"chain_acc": ., "step_acc": ., "answer_acc": .,
    "chain_acc/depth_1": ., ...}``; a depth with no example is left out rather than reported as 0.
    """

    full_state_update = False

    def __init__(self, depths: list[int]):
        super().__init__()
        self.depths = sorted(depths)
        n = len(self.depths)
        for name in ("n", "chain_correct", "answer_correct", "steps_correct", "steps_total"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        depth: torch.Tensor,
        chain_correct: torch.Tensor,
        answer_correct: torch.Tensor,
        steps_correct: torch.Tensor,
        steps_total: torch.Tensor,
    ) -> None:
        """All (B,): depth of each example, chain/answer correctness (bool), step counts (int)."""
        lookup = {d: i for i, d in enumerate(self.depths)}
        unknown = sorted({int(d) for d in depth.tolist()} - set(lookup))
        if unknown:
            raise ValueError(f"depths {unknown} are outside the metric's depths {self.depths}")
        idx = torch.tensor([lookup[int(d)] for d in depth.tolist()], device=self.n.device)
        self.n.index_add_(0, idx, torch.ones_like(idx))
        self.chain_correct.index_add_(0, idx, chain_correct.to(self.n.device).long())
        self.answer_correct.index_add_(0, idx, answer_correct.to(self.n.device).long())
        self.steps_correct.index_add_(0, idx, steps_correct.to(self.n.device).long())
        self.steps_total.index_add_(0, idx, steps_total.to(self.n.device).long())

    def compute(self) -> dict[str, torch.Tensor]:
        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a.sum().float() / b.sum().clamp(min=1).float()

        out = {
            "chain_acc": ratio(self.chain_correct, self.n),
            "answer_acc": ratio(self.answer_correct, self.n),
            "step_acc": ratio(self.steps_correct, self.steps_total),
        }
        for i, d in enumerate(self.depths):
            if self.n[i] == 0:
                continue
            out[f"chain_acc/depth_{d}"] = self.chain_correct[i].float() / self.n[i]
            out[f"answer_acc/depth_{d}"] = self.answer_correct[i].float() / self.n[i]
            out[f"step_acc/depth_{d}"] = self.steps_correct[i].float() / self.steps_total[i].clamp(min=1)
        return out
