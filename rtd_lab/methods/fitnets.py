"""FitNets-style intermediate KD (a baseline of the RTD paper): logit KD plus layer hints at every token.

    L = L_KD + w_hint * (1/m) * sum_j MSE(W_j h_S^{s_j}, h_T^{t_j})

The m = min(n_hints, teacher layers) teacher layers t_j are evenly spaced over the teacher's blocks
(the RTD paper: 4), each matched to an evenly spaced student layer s_j (a student layer may serve several
teacher layers), with one learned linear map W_j per pair. Matching is "spatial": at fixed layers
and at every token, not at reasoning-step boundaries, which is the contrast RTD draws.

``positions``: ``all`` matches every real token, the prompt included (the default, as run so far);
``trace`` only the trace's tokens (those with a label), the positions RTD's boundaries are drawn
from — so "spatial vs temporal" is not confounded by FitNets also matching the question.
``schedule``: ``joint`` trains L above from the first step; ``two_stage`` is Romero et al.'s
recipe: the first ``hint_steps`` optimiser steps train on the hints alone (w_hint · L_hint, no
KD), then on L_KD alone. (Romero et al. train only the layers up to the guided one in stage 1; a
student whose guided layer is its last block — the default 1-layer student — has nothing above it
but the final norm, so stage 1 here updates every weight the hint loss reaches.)
"""

from __future__ import annotations

import torch
from torch import nn

from rtd_lab.losses import IGNORE_INDEX, hint_loss
from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD

POSITIONS = ("all", "trace")
SCHEDULES = ("joint", "two_stage")


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
        positions: str = "all",
        schedule: str = "joint",
        hint_steps: int = 500,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        settings = {"w_hint": w_hint, "n_hints": n_hints, "positions": positions, "schedule": schedule}
        self.check_settings({**settings, "hint_steps": hint_steps})
        self.w_hint = float(w_hint)
        self.positions, self.schedule, self.hint_steps = positions, schedule, int(hint_steps)
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
        for name, allowed in (("positions", POSITIONS), ("schedule", SCHEDULES)):
            if name in settings and settings[name] not in allowed:
                raise ValueError(f"method.{name} must be one of {list(allowed)}, got {settings[name]!r}")
        steps = settings.get("hint_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"method.hint_steps must be an integer >= 1, got {steps!r}")

    def cache_request(self) -> dict:
        return {**super().cache_request(), "hint_layers": tuple(self.teacher_layers)}

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch, hidden=True)
        t = self.teacher_forward(batch, hidden_layers=self.teacher_layers)
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)
        if self.positions == "trace":  # the trace's tokens: labels[:, 0] is never one (ItemCounts.tokens)
            where, count = batch["labels"] != IGNORE_INDEX, n.tokens
        else:
            where, count = batch["attention_mask"].bool(), n.real_tokens
        hints = [
            hint_loss(w(s.hidden_states[i]), h_t, where, count)
            for w, i, h_t in zip(self.hints, self.student_layers, t.layer_hidden, strict=True)
        ]
        l_hint = torch.stack(hints).mean()
        if self.schedule == "two_stage" and self.training:
            # Stage 1: the hints alone; stage 2: KD alone. (Validation logs the joint sum.)
            loss = self.w_hint * l_hint if self.global_step < self.hint_steps else kd.loss
        else:
            loss = kd.loss + self.w_hint * l_hint
        return {"loss": loss, "kd": kd.loss.detach(), "hint": l_hint.detach()}
