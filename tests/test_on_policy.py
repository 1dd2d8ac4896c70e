"""On-policy distillation (GKD): which steps sample, how samples become a batch, and the loss on them."""

from __future__ import annotations

import pytest
import torch

from rtd_lab.evaluation import Evaluator
from rtd_lab.losses import IGNORE_INDEX, kd_loss
from rtd_lab.methods.on_policy import OnPolicyKD, pack_completions
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.models.teacher import Teacher
from tests.test_methods import tiny_lm


def module(tok, bm, **settings) -> OnPolicyKD:
    student, teacher = tiny_lm(tok, 16, seed=3), Teacher(tiny_lm(tok, 24, seed=1))
    return OnPolicyKD(student, teacher, evaluator=Evaluator(tok, bm), **settings).train()


def test_lambda_zero_is_standard_kd(gold_batch):
    tok, bm, batch = gold_batch
    on_policy = module(tok, bm, lmbda=0.0)
    kd = StandardKD(tiny_lm(tok, 16, seed=3), Teacher(tiny_lm(tok, 24, seed=1)))
    n = kd.item_counts(batch)
    expected = kd.compute_losses(batch, n)["loss"].item()
    losses = on_policy.compute_losses(batch, n)
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-6) and losses["on_policy"] == 0


def test_a_sampling_step_distils_on_the_students_own_completions(gold_batch):
    tok, bm, batch = gold_batch
    m = module(tok, bm, lmbda=1.0, divergence="jsd", beta=0.5)
    torch.manual_seed(0)
    losses = m.compute_losses(batch, m.item_counts(batch))
    assert losses["on_policy"] == 1
    torch.manual_seed(0)
    sampled = m.student_samples(batch)  # the same draw
    s = m.student(input_ids=sampled["input_ids"]).logits
    t = m.teacher(sampled["input_ids"]).logits
    n_tokens = (sampled["labels"][:, 1:] != IGNORE_INDEX).sum()
    expected = kd_loss(s[:, :-1], t[:, :-1], sampled["labels"][:, 1:], 1.0, 4.0, "jsd", 0.5, num_items=n_tokens)
    assert losses["loss"].item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert not torch.equal(sampled["input_ids"][:, : batch["input_ids"].size(1)], batch["input_ids"])
    losses["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    m.eval()  # validation: the gold traces, always
    assert m.compute_losses(batch, m.item_counts(batch))["on_policy"] == 0


def test_completions_become_a_right_padded_batch_with_labels_through_eos():
    eos, pad = 2, 0
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])  # left-padded prompts
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    generated = torch.cat([prompt_ids, torch.tensor([[11, eos, pad, pad], [12, 13, 14, 15]])], dim=1)
    b = pack_completions(prompt_ids, prompt_mask, generated, eos, pad)
    assert b["input_ids"].tolist() == [[5, 6, 11, eos, pad, pad, pad], [7, 8, 9, 12, 13, 14, 15]]
    assert b["labels"].tolist() == [[-100, -100, 11, eos, -100, -100, -100], [-100, -100, -100, 12, 13, 14, 15]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]  # cut at the limit: no <eos>
    assert b["split"] is None  # never read from the offline cache of the gold traces


def test_which_steps_sample_depends_on_the_seed_and_step_only(gold_batch):
    tok, bm, _ = gold_batch
    a, b, other = module(tok, bm, lmbda=0.3, seed=1), module(tok, bm, lmbda=0.3, seed=1), module(tok, bm, lmbda=0.3)

    def draws(m):
        out = []
        for step in range(400):
            m.trainer_global_step = step
            out.append(m.samples_this_step())
        return out

    for m in (a, b, other):  # global_step is the trainer's: stand in for it
        type(m).global_step = property(lambda self: self.trainer_global_step)
    try:
        assert draws(a) == draws(b) != draws(other)
        assert 0.25 < sum(draws(a)) / 400 < 0.35
    finally:
        del OnPolicyKD.global_step


@pytest.mark.parametrize("settings", [dict(lmbda=1.5), dict(lmbda=-0.1), dict(sample_temperature=0.0)])
def test_bad_settings_name_the_field(settings):
    field = next(iter(settings))
    with pytest.raises(ValueError, match=f"method.{field}"):
        OnPolicyKD.check_settings(settings)
