"""Chain-of-thought fine-tuning: cross-entropy on question → trace + answer (the RFT paper, FINE-TUNE).

    L = CE(p_S, y) over trace, answer and <eos> tokens (labels != -100)

Trained on gold traces this is also how a teacher is trained from scratch; trained on filtered
teacher samples it is rejection-sampling fine-tuning (RFT).
"""

from __future__ import annotations

import torch

from rtd_lab.methods.base import ItemCounts, ReasoningModule


class CoTFineTune(ReasoningModule):
    needs_teacher = False

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        out = self.student_forward(batch)
        logits = out.logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))
        ce = ce * ((labels != -100).sum() / n.tokens)  # exactly 1 on one process; DDP: ReasoningModule.item_counts
        return {"loss": ce, "ce": ce.detach()}
