"""Reasoning Trace Distillation (the RTD paper).

    L_RTD = L_KD + w_align * L_align + w_coherence * L_coherence        (paper: 0.3, 0.5)

    L_align     = (1/k)     * sum_i (1 - cos(f(h_S_i), h_T_i))
    L_coherence = (1/(k-1)) * sum_i (1 - cos(g(delta_S_i), delta_T_i))^2,   delta_i = h_{i+1} - h_i

h_i is the hidden state at the token where step i concludes (``batch["boundary_pos"]``), taken at
``student_layer`` of the student and ``teacher.layer`` of the teacher. f and g are learned linear
maps from student to teacher width, trained with the student. They have no bias: g acts on
differences of states, where a constant offset has no meaning, and f is kept alike.
"""

from __future__ import annotations

import torch
from torch import nn

from rtd_lab.losses import align_loss, coherence_loss, gather_boundaries, transitions
from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.models.teacher import check_layer, layer_states


class RTD(StandardKD):
    # The KD settings (alpha, temperature, divergence, beta) and self.kd come from StandardKD.
    def __init__(
        self,
        *args,
        w_align: float = 0.3,
        w_coherence: float = 0.5,
        student_layer: int | str = -1,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.check_settings({"w_align": w_align, "w_coherence": w_coherence})
        self.w_align, self.w_coherence = float(w_align), float(w_coherence)
        check_layer(student_layer, self.student.config.num_hidden_layers, "method.student_layer")
        self.student_layer = student_layer
        d_s, d_t = self.student.config.hidden_size, self.teacher.hidden_size
        self.f = nn.Linear(d_s, d_t, bias=False)  # student → teacher space, for boundary states
        self.g = nn.Linear(d_s, d_t, bias=False)  # student → teacher space, for transitions

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        check_weights(settings, "w_align", "w_coherence")
        if "student_layer" in settings:  # the index range is checked once the student is built
            check_layer(settings["student_layer"], None, "method.student_layer")

    def transition_projection(self) -> nn.Module:
        return self.g

    def rtd_losses(
        self, kd_loss: torch.Tensor, h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, n: ItemCounts
    ) -> dict[str, torch.Tensor]:
        """L_RTD = L_KD + w_align * L_align + w_coherence * L_coherence, and its logged parts, from the KD
        term and the student (B, K, D_S) and teacher (B, K, D_T) boundary states with their (B, K) mask."""
        l_align = align_loss(self.f(h_s), h_t, mask, n.chains)
        delta_s, t_mask = transitions(h_s, mask)  # (B, K-1, D_S)
        delta_t, _ = transitions(h_t, mask)  # (B, K-1, D_T)
        l_coherence = coherence_loss(self.g(delta_s), delta_t, t_mask, n.transition_chains)
        return {
            "loss": kd_loss + self.w_align * l_align + self.w_coherence * l_coherence,
            "kd": kd_loss.detach(),
            "align": l_align.detach(),
            "coherence": l_coherence.detach(),
        }

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        pos, mask = batch["boundary_pos"], batch["boundary_mask"]  # (B, K)
        s = self.student_forward(batch, hidden=True)
        t = self.teacher_forward(batch, boundaries=True)
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)

        h_s = gather_boundaries(layer_states(s.hidden_states, self.student_layer), pos)  # (B, K, D_S)
        return self.rtd_losses(kd.loss, h_s, t.boundary_hidden, mask, n)
