"""On-policy RTD — beyond both papers: RTD whose trajectory losses also reach the student's own samples.

On-policy distillation (``rtd_lab.methods.on_policy``, GKD) shows the student the states its own
mistakes lead to, but matches token distributions only; RTD matches step boundaries and transitions
but only on the teacher's (gold) traces. A sample of the student has no gold step boundaries, so here
they come from the RTD paper's boundary classifier, run on the teacher's hidden states of that sample
(``rtd_lab.traces.segment``; the run trains or loads it, ``needs_boundary_classifier``):

    with probability lambda:  y ~ pi_S(. | x),   b_1..b_k = classifier boundaries of (x, y) from the teacher's states
        L = L_on(y) + w_align * L_align(b) + w_coherence * L_coherence(b)
    otherwise:                L = L_RTD on the gold traces (their own boundaries, ``data.boundaries``)

L_on is on-policy KD's divergence on the sampled tokens (no cross-entropy: the tokens are the
student's); L_align and L_coherence are RTD's (``RTD.rtd_losses``) at the found boundaries,
both models' states taken from the same sampled sequence. The teacher runs once per sample: one pass
gives its logits and every layer's states, from which the classifier's features and the boundary
states both come. ``lmbda = 0`` is RTD; the curriculum (RTD's depth curriculum) filters the questions
a step samples for as it filters the gold traces, and validates on the gold traces.
"""

from __future__ import annotations

import torch

from rtd_lab.losses import IGNORE_INDEX, gather_boundaries
from rtd_lab.methods.base import ItemCounts
from rtd_lab.methods.on_policy import OnPolicyKD
from rtd_lab.methods.rtd import RTD
from rtd_lab.models.teacher import layer_states
from rtd_lab.traces.segment import boundaries_from_features, features_of


class OnPolicyRTD(OnPolicyKD, RTD):
    # Settings: OnPolicyKD's (lmbda, sample_temperature, seed), RTD's (w_align, w_coherence,
    # student_layer) and standard KD's (alpha, temperature, divergence, beta), through the MRO.
    diagnostics = ("on_policy", "sample_len", "sample_steps")
    needs_boundary_classifier = True

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        if not (self.training and self.samples_this_step()):
            losses = RTD.compute_losses(self, batch, n)
            zero = losses["loss"].new_zeros(())
            return {**losses, "on_policy": zero, "sample_len": zero, "sample_steps": zero}
        clf = self.boundary_classifier
        if clf is None:
            raise RuntimeError("on-policy RTD segments the student's samples: use_boundary_classifier() first")
        sampled = self.student_samples(batch)
        every_layer = list(range(self.teacher.model.config.num_hidden_layers + 1))
        t = self.teacher_forward(sampled, hidden_layers=every_layer)  # online: the cache holds gold traces
        pos, mask = boundaries_from_features(clf, features_of(t.layer_hidden), sampled)  # (B, K)
        sampled = {**sampled, "boundary_pos": pos, "boundary_mask": mask}
        n_s = self.item_counts(sampled)
        s = self.student_forward(sampled, hidden=True)
        kd = self.kd_on_policy(s.logits, t.logits, sampled["labels"], n_s.tokens)
        h_s = gather_boundaries(layer_states(s.hidden_states, self.student_layer), pos)  # (B, K, D_S)
        h_t = gather_boundaries(layer_states(t.layer_hidden, self.teacher.layer), pos)  # (B, K, D_T)
        losses = self.rtd_losses(kd.loss, h_s, h_t, mask, n_s)
        return {
            **losses,
            "on_policy": losses["loss"].new_ones(()),
            "sample_len": (sampled["labels"] != IGNORE_INDEX).sum(1).float().mean(),
            "sample_steps": mask.sum(1).float().mean(),  # boundaries the classifier found per sample
        }
