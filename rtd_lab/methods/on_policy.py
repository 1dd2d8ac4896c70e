"""On-policy distillation (generalized KD, GKD: Agarwal et al., "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes", ICLR 2024; TRL's GKDTrainer) — beyond the RTD paper,
the remedy for exposure bias: a student trained only on the teacher's traces never sees the states
its own mistakes lead to.

Each training step, with probability λ (``lmbda``), the batch's questions x get the student's own
completions y ~ pi_S(. | x) (temperature ``sample_temperature``), and the teacher scores them token
by token:

    L_on  = (1/N) * sum_{t in y} D( p_T(. | x, y_<t) || p_S(. | x, y_<t) )       (at temperature T, x T^2)

with D the divergence of ``method.divergence`` (forward KL, reverse KL or the generalized JSD(beta)
GKD recommends; ``losses.token_divergence``) over the N sampled tokens, the closing <eos> included.
There is no cross-entropy on a sampled trace: its tokens are the student's, not a target. Otherwise
(probability 1 − λ) the step is standard KD on the gold traces (alpha, T: ``standard_kd``).
``lmbda = 0`` is exactly standard KD; ``lmbda = 1`` trains on the student's samples only. Validation
uses the gold traces, so its loss compares with every other method's. Whether a step samples is
drawn from (``seed``, step) alone: the same on every DDP rank and in a resumed run.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from rtd_lab.losses import IGNORE_INDEX
from rtd_lab.methods.base import ItemCounts
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.models.decode import split_generated


class OnPolicyKD(StandardKD):
    diagnostics = ("on_policy", "sample_len")

    def __init__(self, *args, lmbda: float = 0.5, sample_temperature: float = 1.0, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_settings({"lmbda": lmbda, "sample_temperature": sample_temperature})
        self.lmbda = float(lmbda)
        self.sample_temperature = float(sample_temperature)
        self.seed = int(seed)
        self.kd_on_policy = replace(self.kd, alpha=1.0)  # the divergence alone: no CE on the student's tokens

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        lmbda = settings.get("lmbda", 0.5)
        if isinstance(lmbda, bool) or not isinstance(lmbda, int | float) or not 0 <= lmbda <= 1:
            raise ValueError(f"method.lmbda must be in [0, 1], got {lmbda!r}")
        if "sample_temperature" in settings and not settings["sample_temperature"] > 0:
            raise ValueError(f"method.sample_temperature must be > 0, got {settings['sample_temperature']}")

    @torch.no_grad()
    def student_samples(self, batch: dict) -> dict:
        """A training batch of the student's own completions for the batch's questions: right-padded
        prompt + completion (through <eos>), labels on the completion's tokens only."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        out = self.sample_student(prompt_ids, prompt_mask, self.sample_temperature)
        tokenizer = self.evaluator.tokenizer
        return pack_completions(prompt_ids, prompt_mask, out, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def samples_this_step(self) -> bool:
        """Whether this training step trains on the student's samples: a draw from (seed, step) alone,
        so every DDP rank and a resumed run make the same one (sampling itself consumes the random
        stream by how long the samples are, which differs between ranks)."""
        return self.lmbda > 0 and random.Random(f"on_policy/{self.seed}/{self.global_step}").random() < self.lmbda

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        on_policy = self.training and self.samples_this_step()
        if not on_policy:
            s = self.student_forward(batch)
            t = self.teacher_forward(batch)
            kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)
        else:
            sampled = self.student_samples(batch)
            s = self.student_forward(sampled)
            t = self.teacher_forward(sampled)  # online: the offline cache holds the gold traces only
            kd = self.kd_on_policy(s.logits, t.logits, sampled["labels"], self.item_counts(sampled).tokens)
        zero = kd.loss.new_zeros(())
        sample_len = (sampled["labels"] != IGNORE_INDEX).sum(1).float().mean() if on_policy else zero
        return {
            "loss": kd.loss,
            "kd": kd.loss.detach(),
            "div": kd.div.detach(),
            "ce": kd.ce.detach(),
            "on_policy": kd.loss.new_tensor(float(on_policy)),
            "sample_len": sample_len,
        }


def pack_completions(prompt_ids, prompt_mask, generated, eos_id: int, pad_id: int) -> dict:
    """``generated`` (B, P + N), as ``decode`` returns it for left-padded prompts (B, P), re-packed as a
    right-padded training batch: input_ids, attention_mask, labels (the completion's tokens, its <eos>
    included; IGNORE_INDEX elsewhere) and an empty set of step boundaries. A completion cut off at the
    token limit keeps what it has, with no <eos>."""
    rows = split_generated(prompt_ids, prompt_mask, generated, eos_id)
    B, T = len(rows), max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for b, (prompt, completion) in enumerate(rows):
        ids = torch.tensor(prompt + completion, dtype=torch.long)
        input_ids[b, : len(ids)], attention_mask[b, : len(ids)] = ids, 1
        labels[b, len(prompt) : len(ids)] = ids[len(prompt) :]
    device = generated.device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
        "boundary_pos": torch.zeros((B, 1), dtype=torch.long, device=device),
        "boundary_mask": torch.zeros((B, 1), dtype=torch.bool, device=device),
        "split": None,  # not rows of a cached split: the teacher runs online
    }
