"""The offline teacher cache: sparse KD against dense KD, build/verify/rebuild, and cached = online."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rtd_lab.teacher_cache as tc
from rtd_lab.losses import kd_loss, sparse_kd_loss
from rtd_lab.tasks.cache import run_cache
from rtd_lab.tasks.train import attach_teacher_cache, prepare, train

DIVS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]


def _inputs(V=12, k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 5, V, generator=g, requires_grad=True)
    t = 3 * torch.randn(2, 5, V, generator=g)
    labels = torch.randint(0, V, (2, 5), generator=g)
    labels[0, :2] = -100
    values, indices = t.topk(k or V, dim=-1)
    return s, t, labels, values, indices, torch.logsumexp(t / 4.0, dim=-1)


@pytest.mark.parametrize(("divergence", "beta"), DIVS)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_sparse_kd_with_every_token_is_dense_kd(divergence, beta, tail):
    s, t, labels, values, indices, lse = _inputs()
    dense = kd_loss(s, t, labels, 0.7, 4.0, divergence, beta)
    sparse = sparse_kd_loss(s, values, indices, lse, labels, 0.7, 4.0, divergence, beta, tail=tail)
    assert float(sparse.loss) == pytest.approx(float(dense.loss), rel=1e-5, abs=1e-6)
    g_dense = torch.autograd.grad(dense.loss, s)[0]
    g_sparse = torch.autograd.grad(sparse.loss, s)[0]
    assert torch.allclose(g_sparse, g_dense, atol=1e-6)


def test_top_k_bucket_lower_bounds_forward_kl_and_keeps_teacher_probabilities():
    s, t, labels, values, indices, lse = _inputs(V=40, k=5)
    dense = kd_loss(s, t, labels, 1.0, 4.0)
    bucket = sparse_kd_loss(s, values, indices, lse, labels, 1.0, 4.0, tail="bucket")
    renorm = sparse_kd_loss(s, values, indices, lse, labels, 1.0, 4.0, tail="renormalize")
    # Coarse-graining V tokens into k + 1 bins can only lose divergence (data processing inequality).
    assert 0 < float(bucket.div) <= float(dense.div)
    assert float(renorm.div) != pytest.approx(float(bucket.div))
    assert torch.autograd.grad(bucket.loss, s)[0].abs().sum() > 0
    # The bucket's k teacher probabilities are the dense ones at T, not renormalised.
    log_p_s, log_p_t = tc_log_probs(s, values, indices, lse)
    dense_p = torch.softmax(t / 4.0, -1).gather(-1, indices)
    assert torch.allclose(log_p_t[..., :5].exp(), dense_p, atol=1e-6)
    assert torch.allclose(log_p_t.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    assert torch.allclose(log_p_s.exp().sum(-1), torch.ones(2, 5), atol=1e-5)


def tc_log_probs(s, values, indices, lse):
    from rtd_lab.losses import sparse_log_probs

    return sparse_log_probs(s, values, indices, lse, 4.0)


EXACT = ["teacher_cache.top_k=1000", "teacher_cache.dtype=float32"]  # k >= V: the cache holds everything


@pytest.mark.parametrize("experiment", ["rtd", "fitnets"])
def test_cached_losses_equal_online_losses(make_cfg, experiment):
    cfg = make_cfg(f"+experiment={experiment}", "task=cache", *EXACT)
    info = run_cache(cfg)
    assert info["bytes_per_token"] > 0 and Path(info["path"], tc.MANIFEST).exists()
    p = prepare(cfg)
    cache = attach_teacher_cache(cfg, p)  # mode=auto: the cache is present, so it is used
    assert cache is not None and str(cache.path) == info["path"]
    batch = next(iter(p.datamodule.train_dataloader()))
    assert not any(k.startswith("teacher") for k in batch)  # the batch carries data only
    assert p.module.teacher_cache is cache and batch["split"] == "train"
    if experiment == "fitnets":
        assert cache.spec_hint_names() == {f"hint_{i}" for i in p.module.teacher_layers}
    cached = p.module.compute_losses(batch, p.module.item_counts(batch))
    p.module.teacher_cache = None  # the same batch, the teacher online
    online = p.module.compute_losses(batch, p.module.item_counts(batch))
    p.module.teacher_cache = cache  # the cache holds the training split: other splits' rows run online
    val = next(iter(p.datamodule.val_dataloader()))
    assert torch.is_tensor(p.module.teacher_forward(val).logits)
    for name in online:
        assert float(cached[name]) == pytest.approx(float(online[name]), rel=1e-5, abs=1e-6), name


def test_a_run_uses_the_cache_and_reports_it(make_cfg):
    run_cache(make_cfg("+experiment=standard_kd", "task=cache"))
    results = train(make_cfg("+experiment=standard_kd"))
    assert results["teacher_cache"]["supervised_tokens"] > 0
    off = train(make_cfg("+experiment=standard_kd", "teacher_cache.mode=off"))
    assert off["teacher_cache"] is None


def _built(make_cfg, *overrides):
    cfg = make_cfg("+experiment=standard_kd", "task=cache", "teacher_cache.shard_size=50", *overrides)
    info = run_cache(cfg)
    return cfg, Path(info["path"])


def test_truncated_or_corrupted_cache_is_never_used(make_cfg, caplog):
    cfg, path = _built(make_cfg)
    shard = path / "shard_00001" / "topk_values.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])  # truncated
    p = prepare(make_cfg("+experiment=standard_kd"))
    assert attach_teacher_cache(cfg, p) is None  # mode=auto: ignored, the teacher runs online
    assert "truncated" in caplog.text
    shard.write_bytes(data[:-2] + bytes([data[-2] ^ 1, data[-1]]))  # same size, one bit flipped
    assert attach_teacher_cache(cfg, p) is None and "SHA-256" in caplog.text
    # mode=build: rebuilt, then used.
    cache = attach_teacher_cache(
        make_cfg("+experiment=standard_kd", "teacher_cache.mode=build", "teacher_cache.shard_size=50"), p
    )
    assert cache is not None and shard.read_bytes() == data


def test_other_data_gets_another_cache(make_cfg):
    _, path = _built(make_cfg)
    _, other = _built(make_cfg, "data.boundaries=lines")  # other boundaries: another fingerprint
    assert other != path
    manifest = json.loads((path / tc.MANIFEST).read_text())
    assert manifest["n_examples"] == 144 and len(manifest["shards"]) == 3


def test_an_interrupted_build_keeps_its_finished_shards(make_cfg, monkeypatch):
    calls = []
    real = tc._teacher_rows

    def crash_on_second(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "_teacher_rows", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _built(make_cfg)
    monkeypatch.setattr(tc, "_teacher_rows", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    _, path = _built(make_cfg)
    assert calls == [50, 50, 50, 44]  # shard 0 was not computed again
    assert not list(path.parent.glob(".*partial"))
