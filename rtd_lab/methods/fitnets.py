"""FitNets-style intermediate KD (a baseline of the RTD paper): logit KD plus layer hints at every token.

    L = L_KD + w_hint * (1/m) * sum_j MSE(W_j h_S^{s_j}, h_T^{t_j})

The m = min(n_hints, teacher layers) teacher layers t_j are evenly spaced over the teacher's blocks
(the RTD paper: 4), each matched to an evenly spaced student layer s_j (a student layer may serve several
teacher layers), with one learned linear map W_j per pair. Matching is "spatial": at fixed layers
and at every real token, not at reasoning-step boundaries, which is the contrast RTD draws.
"""

from __future__ import annotations

import torch
from torch import nn

from rtd_lab.losses import hint_loss
from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD


def evenly_spaced(n_layers: int, m: int) -> list[int]:
    """m indices into ``hidden_states`` (1 = first block's output, n_layers = last), evenly spread."""
    if m == 1:
        return [n_layers]
    return [round(1 + i * (n_layers - 1) / (m - 1)) for i in range(m)]


class FitNets(StandardKD):
    # The KD settings (alpha, temperature, divergence, beta) and self.kd come from StandardKD.
    def __init__(
        self,
        *args,
        w_hint: float = 1.0,
        n_hints: int = 4,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.check_settings({"w_hint": w_hint, "n_hints": n_hints})
        self.w_hint = float(w_hint)
        n_t = self.teacher.model.config.num_hidden_layers
        n_s = self.student.config.num_hidden_layers
        m = min(n_hints, n_t)
        self.teacher_layers = evenly_spaced(n_t, m)
        self.student_layers = evenly_spaced(n_s, m)
        d_s, d_t = self.student.config.hidden_size, self.teacher.hidden_size
        self.hints = nn.ModuleList(nn.Linear(d_s, d_t) for _ in range(m))

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        check_weights(settings, "w_hint")
        if "n_hints" in settings and settings["n_hints"] < 1:
            raise ValueError(f"method.n_hints must be >= 1, got {settings['n_hints']}")

    def cache_request(self) -> dict:
        return {**super().cache_request(), "hint_layers": tuple(self.teacher_layers)}

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch, hidden=True)
        t = self.teacher_forward(batch, hidden_layers=self.teacher_layers)
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)
        real = batch["attention_mask"].bool()
        hints = [
            hint_loss(w(s.hidden_states[i]), h_t, real, n.real_tokens)
            for w, i, h_t in zip(self.hints, self.student_layers, t.layer_hidden, strict=True)
        ]
        l_hint = torch.stack(hints).mean()
        return {"loss": kd.loss + self.w_hint * l_hint, "kd": kd.loss.detach(), "hint": l_hint.detach()}
