"""Cosine-embedding KD: the loss against its formula, the method's total loss, and a short run."""

import pytest
import torch

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.losses import cosine_hidden_loss, kd_loss
from rtd_lab.methods.cosine_kd import CosineKD
from rtd_lab.models.teacher import Teacher
from rtd_lab.tasks.train import train
from tests.test_methods import tiny_lm


def test_cosine_loss_matches_its_formula_and_ignores_masked_tokens():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    hs_masked = hs.clone()
    hs_masked[~mask] = 1e4  # never read
    cos = [torch.dot(hs[b, t], ht[b, t]) / (hs[b, t].norm() * ht[b, t].norm()) for b in range(2) for t in range(4)]
    want = sum(1 - c for c, m in zip(cos, mask.flatten(), strict=True) if m) / int(mask.sum())
    assert cosine_hidden_loss(hs_masked, ht, mask).item() == pytest.approx(float(want), rel=1e-5)
    assert cosine_hidden_loss(2.0 * ht, ht, mask).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert cosine_hidden_loss(-ht, ht, mask).item() == pytest.approx(2.0, rel=1e-6)


def test_cosine_kd_loss_is_kd_plus_weighted_cosine_and_trains_the_projection():
    tok = build_synthetic_tokenizer(11)
    bm = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=16, n_val_per_depth=4, n_test_per_depth=4)
    dm = ReasoningDataModule.gold(bm, tok, 12, 12)
    batch = next(iter(dm.train_dataloader()))
    teacher = Teacher(tiny_lm(tok, 24, layers=2, seed=1))
    module = CosineKD(tiny_lm(tok, 16), teacher, w_cos=0.5)
    losses = module.compute_losses(batch, module.item_counts(batch))

    s = module.student(input_ids=batch["input_ids"], output_hidden_states=True)
    t = teacher.model(input_ids=batch["input_ids"], output_hidden_states=True)
    kd = kd_loss(s.logits[:, :-1], t.logits[:, :-1], batch["labels"][:, 1:], alpha=0.7, temperature=4.0).loss
    cos = cosine_hidden_loss(module.proj(s.hidden_states[-1]), t.hidden_states[-1], batch["labels"] != -100)
    assert losses["loss"].item() == pytest.approx((kd + 0.5 * cos).item(), rel=1e-5)
    losses["loss"].backward()
    assert module.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"method\.w_cos"):
        CosineKD(tiny_lm(tok), teacher, w_cos=-1)


def test_cosine_kd_runs_end_to_end(make_cfg):
    results = train(make_cfg("method=cosine_kd"))
    assert results["method"] == "cosine_kd" and results["curriculum"] is None  # no curriculum unless asked
    assert 0.0 <= results["student"]["metrics"]["chain_acc"] <= 1.0
