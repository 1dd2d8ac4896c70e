"""Cosine-embedding KD (DistilBERT's hidden-state term, Sanh et al. 2019): logit KD plus the cosine
distance between the student's and the teacher's last hidden states at every supervised token.

    L = L_KD + w_cos * L_cos,   L_cos = mean_t (1 - cos(W h_S[t], h_T[t]))

W is a learned linear map from the student's width to the teacher's. The worked example of the
README's "adding a method" checklist: this module, ``conf/method/cosine_kd.yaml``,
``rtd_lab.losses.cosine_hidden_loss`` and ``tests/test_cosine_kd.py``, nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from rtd_lab.losses import cosine_hidden_loss
from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD


class CosineKD(StandardKD):
    # The KD settings (alpha, temperature, divergence, beta) and self.kd come from StandardKD.
    def __init__(self, *args, w_cos: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_settings({"w_cos": w_cos})
        self.w_cos = float(w_cos)
        self.teacher_layer = self.teacher.model.config.num_hidden_layers  # the last block's output
        self.proj = nn.Linear(self.student.config.hidden_size, self.teacher.hidden_size, bias=False)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        check_weights(settings, "w_cos")

    def cache_request(self) -> dict:
        return {**super().cache_request(), "hint_layers": (self.teacher_layer,)}

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        s = self.student_forward(batch, hidden=True)
        t = self.teacher_forward(batch, hidden_layers=[self.teacher_layer])
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)
        supervised = batch["labels"] != -100  # the trace and answer tokens, as the KD term
        l_cos = cosine_hidden_loss(self.proj(s.hidden_states[-1]), t.layer_hidden[0], supervised, n.tokens)
        return {"loss": kd.loss + self.w_cos * l_cos, "kd": kd.loss.detach(), "cos": l_cos.detach()}
