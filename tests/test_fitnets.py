"""FitNets baseline: layer mapping, the hint loss, and the method's total loss."""

import numpy as np
import pytest
import torch

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.losses import hint_loss, kd_loss
from rtd_lab.methods.fitnets import FitNets, evenly_spaced
from rtd_lab.models.teacher import Teacher
from tests.test_methods import tiny_lm


def test_evenly_spaced_layers():
    assert evenly_spaced(4, 4) == [1, 2, 3, 4]
    assert evenly_spaced(8, 4) == [1, 3, 6, 8]
    assert evenly_spaced(2, 1) == [2]
    assert evenly_spaced(1, 2) == [1, 1]  # a shallower student serves several teacher layers


def test_hint_loss_matches_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    hs[~mask] = 1e4
    want = np.mean([(hs[b, t] - ht[b, t]).numpy() ** 2 for b in range(2) for t in range(5) if mask[b, t]])
    assert hint_loss(hs, ht, mask).item() == pytest.approx(float(want), rel=1e-5)
    assert hint_loss(ht, ht, mask).item() == 0.0


@pytest.fixture(scope="module")
def batch_and_tok():
    tok = build_synthetic_tokenizer(11)
    bm = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=16, n_val_per_depth=4, n_test_per_depth=4)
    dm = ReasoningDataModule.gold(bm, tok, 12, 12)
    return next(iter(dm.train_dataloader())), tok


def test_fitnets_loss_is_kd_plus_mean_hint(batch_and_tok):
    batch, tok = batch_and_tok
    teacher = Teacher(tiny_lm(tok, 24, layers=4, seed=1))
    module = FitNets(tiny_lm(tok, 16, layers=2), teacher, w_hint=0.5, n_hints=4)
    assert module.teacher_layers == [1, 2, 3, 4] and module.student_layers == [1, 1, 2, 2]
    losses = module.compute_losses(batch, module.item_counts(batch))

    s = module.student(input_ids=batch["input_ids"], output_hidden_states=True)
    t = teacher.model(input_ids=batch["input_ids"], output_hidden_states=True)
    kd = kd_loss(s.logits[:, :-1], t.logits[:, :-1], batch["labels"][:, 1:]).loss
    real = batch["attention_mask"].bool()
    hints = [
        hint_loss(w(s.hidden_states[i]), t.hidden_states[j], real)
        for w, i, j in zip(module.hints, [1, 1, 2, 2], [1, 2, 3, 4], strict=True)
    ]
    want = kd + 0.5 * torch.stack(hints).mean()
    assert losses["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    losses["loss"].backward()
    assert all(w.weight.grad.abs().sum() > 0 for w in module.hints)
    assert all(p.grad is None for p in teacher.parameters())


def test_fitnets_caps_hints_at_teacher_depth_and_validates(batch_and_tok):
    _, tok = batch_and_tok
    module = FitNets(tiny_lm(tok, 16), Teacher(tiny_lm(tok, 24, layers=2)), n_hints=4)
    assert module.teacher_layers == [1, 2] and len(module.hints) == 2
    with pytest.raises(ValueError, match=r"method\.w_hint"):
        FitNets(tiny_lm(tok), Teacher(tiny_lm(tok)), w_hint=-1)
    with pytest.raises(ValueError, match=r"method\.n_hints"):
        FitNets(tiny_lm(tok), Teacher(tiny_lm(tok)), n_hints=0)


def test_fitnets_trace_positions_match_only_the_trace_tokens(batch_and_tok):
    """positions=trace: the hint loss over the labelled (trace) tokens only, the prompt left out."""
    batch, tok = batch_and_tok
    teacher = Teacher(tiny_lm(tok, 24, layers=2, seed=1))
    module = FitNets(tiny_lm(tok, 16), teacher, w_hint=1.0, n_hints=2, positions="trace")
    losses = module.compute_losses(batch, module.item_counts(batch))
    s = module.student(input_ids=batch["input_ids"], output_hidden_states=True)
    t = teacher.model(input_ids=batch["input_ids"], output_hidden_states=True)
    trace = batch["labels"] != -100
    assert 0 < trace.sum() < batch["attention_mask"].sum()  # the prompt is real but not trace
    pairs = zip(module.hints, module.student_layers, module.teacher_layers, strict=True)
    hints = [hint_loss(w(s.hidden_states[i]), t.hidden_states[j], trace) for w, i, j in pairs]
    assert losses["hint"].item() == pytest.approx(torch.stack(hints).mean().item(), rel=1e-5)
    every = FitNets(tiny_lm(tok, 16), teacher, w_hint=1.0, n_hints=2)  # the same student weights (seed 0)
    assert every.compute_losses(batch, every.item_counts(batch))["hint"].item() != pytest.approx(losses["hint"].item())


def test_fitnets_two_stage_trains_hints_then_kd(batch_and_tok, monkeypatch):
    batch, tok = batch_and_tok
    teacher = Teacher(tiny_lm(tok, 24, seed=1))
    module = FitNets(tiny_lm(tok, 16), teacher, w_hint=0.5, schedule="two_stage", hint_steps=3)
    module.train()
    for step, stage in ((0, "hint"), (2, "hint"), (3, "kd"), (10, "kd")):
        monkeypatch.setattr(FitNets, "global_step", property(lambda self, s=step: s))
        losses = module.compute_losses(batch, module.item_counts(batch))
        want = 0.5 * losses["hint"] if stage == "hint" else losses["kd"]
        assert losses["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    for name, value in (("positions", "prompt"), ("schedule", "hints_first"), ("hint_steps", 0)):
        with pytest.raises(ValueError, match=rf"method\.{name}"):
            FitNets(tiny_lm(tok), Teacher(tiny_lm(tok)), **{name: value})
