"""On-policy RTD: RTD on the gold steps, and on a sampled step the divergence plus RTD's trajectory
losses at the boundaries the classifier finds on the teacher's states of the student's sample."""

from __future__ import annotations

import pytest
import torch

from rtd_lab.evaluation import Evaluator
from rtd_lab.losses import IGNORE_INDEX, align_loss, coherence_loss, gather_boundaries, kd_loss, transitions
from rtd_lab.methods.rtd import RTD
from rtd_lab.methods.rtd_on_policy import OnPolicyRTD
from rtd_lab.models.teacher import Teacher
from rtd_lab.tasks.train import train
from rtd_lab.traces.segment import BoundaryClassifier, online_boundaries, token_features
from tests.test_methods import tiny_lm


def classifier(teacher: Teacher, batch: dict) -> BoundaryClassifier:
    """An untrained classifier whose threshold marks about half of a trace's tokens: boundaries exist."""
    feats = token_features(teacher.model, batch)
    torch.manual_seed(0)
    clf = BoundaryClassifier(feats.size(-1), 16).eval()
    with torch.no_grad():
        clf.threshold = float(torch.sigmoid(clf(feats))[batch["labels"] != IGNORE_INDEX].median())
    return clf


def module(tok, bm, batch, **settings) -> OnPolicyRTD:
    student, teacher = tiny_lm(tok, 16, seed=3), Teacher(tiny_lm(tok, 24, seed=1))
    m = OnPolicyRTD(student, teacher, evaluator=Evaluator(tok, bm), **settings).train()
    m.use_boundary_classifier(classifier(teacher, batch), on_batches=False)
    return m


def test_lambda_zero_is_rtd_on_the_gold_boundaries(gold_batch):
    tok, bm, batch = gold_batch
    m = module(tok, bm, batch, lmbda=0.0, w_align=0.3, w_coherence=1.5)
    rtd = RTD(tiny_lm(tok, 16, seed=3), Teacher(tiny_lm(tok, 24, seed=1)), w_align=0.3, w_coherence=1.5)
    rtd.load_state_dict(m.state_dict(), strict=False)  # the same projections f, g
    n = rtd.item_counts(batch)
    want = rtd.compute_losses(batch, n)
    got = m.compute_losses(m.with_step_boundaries(batch), n)  # on_batches=False: the gold boundaries stay
    assert got["loss"].item() == pytest.approx(want["loss"].item(), rel=1e-6)
    assert got["coherence"].item() == pytest.approx(want["coherence"].item(), rel=1e-6) and got["on_policy"] == 0


def test_a_sampling_step_aligns_at_the_classifiers_boundaries_on_the_sample(gold_batch):
    tok, bm, batch = gold_batch
    m = module(tok, bm, batch, lmbda=1.0, w_align=0.3, w_coherence=1.5, divergence="jsd", beta=0.5)
    torch.manual_seed(0)
    losses = m.compute_losses(batch, m.item_counts(batch))
    assert losses["on_policy"] == 1
    torch.manual_seed(0)
    sampled = m.student_samples(batch)  # the same draw
    # Independently: a separate teacher pass for the classifier's features (online_boundaries).
    pos, mask = online_boundaries(m.boundary_classifier, m.teacher.model, sampled)
    assert mask.sum() > 0 and losses["sample_steps"].item() == pytest.approx(mask.sum(1).float().mean().item())
    s = m.student(input_ids=sampled["input_ids"], output_hidden_states=True)
    t = m.teacher.model(input_ids=sampled["input_ids"], output_hidden_states=True)
    n_tokens = (sampled["labels"][:, 1:] != IGNORE_INDEX).sum()
    kd = kd_loss(s.logits[:, :-1], t.logits[:, :-1], sampled["labels"][:, 1:], 1.0, 4.0, "jsd", 0.5, num_items=n_tokens)
    h_s = gather_boundaries(s.hidden_states[-1], pos)
    h_t = gather_boundaries(t.hidden_states[-1], pos)
    d_s, t_mask = transitions(h_s, mask)
    d_t, _ = transitions(h_t, mask)
    chains, t_chains = mask.any(1).sum(), (mask[:, 1:] & mask[:, :-1]).any(1).sum()
    want = (
        kd.loss + 0.3 * align_loss(m.f(h_s), h_t, mask, chains) + 1.5 * coherence_loss(m.g(d_s), d_t, t_mask, t_chains)
    )
    assert losses["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert losses["align"] > 0 and losses["coherence"] > 0
    losses["loss"].backward()
    assert m.f.weight.grad is not None and m.g.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher.parameters())
    m.eval()  # validation: RTD on the gold traces
    assert m.compute_losses(batch, m.item_counts(batch))["on_policy"] == 0


def test_a_sampling_step_without_a_classifier_says_so(gold_batch):
    tok, bm, batch = gold_batch
    m = OnPolicyRTD(tiny_lm(tok, 16), Teacher(tiny_lm(tok, 24)), evaluator=Evaluator(tok, bm), lmbda=1.0).train()
    with pytest.raises(RuntimeError, match="use_boundary_classifier"):
        m.compute_losses(batch, m.item_counts(batch))


@pytest.mark.parametrize("settings", [dict(lmbda=2.0), dict(w_align=-1.0), dict(sample_temperature=0)])
def test_bad_settings_name_the_field(settings):
    with pytest.raises(ValueError, match=f"method.{next(iter(settings))}"):
        OnPolicyRTD.check_settings(settings)


def test_a_run_trains_the_classifier_for_the_samples_and_keeps_the_gold_boundaries(make_cfg, monkeypatch):
    """+experiment=rtd_on_policy: the run trains (or loads) the boundary classifier, segments every
    sampled step's samples with it, and never replaces the gold traces' boundaries (data.boundaries=gold)."""
    import rtd_lab.methods.base as base
    import rtd_lab.methods.rtd_on_policy as rop

    batches, samples = [], []
    real = rop.boundaries_from_features
    monkeypatch.setattr(base, "online_boundaries", lambda *a: batches.append(1))
    monkeypatch.setattr(rop, "boundaries_from_features", lambda *a: samples.append(1) or real(*a))
    extra = ("+experiment=rtd_on_policy", "method.lmbda=1.0", "segment.epochs=5", "segment.n_train_examples=40")
    results = train(make_cfg(*extra, "teacher_cache.mode=build"))  # with RTD's depth curriculum
    assert results["segmenter"]["report"]["heldout_tokens"] > 0
    assert batches == [] and len(samples) == results["student"]["steps"]
    assert results["method"] == "rtd_on_policy" and results["curriculum"] is not None
