"""Losses against analytic cases and against an independent, loop-per-chain reimplementation."""

import math

import numpy as np
import pytest
import torch

from rtd_lab.losses import align_loss, coherence_loss, gather_boundaries, kd_loss, token_divergence, transitions


def _np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- independent reference implementations: numpy, one chain / one token at a time -----------
def ref_kd(s_logits, t_logits, labels, alpha, T):
    kls, ces = [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:
                continue
            p_t = _np_softmax(t_logits[b, t] / T)
            p_s = _np_softmax(s_logits[b, t] / T)
            kls.append(float(np.sum(p_t * (np.log(p_t) - np.log(p_s)))))
            ces.append(-math.log(_np_softmax(s_logits[b, t])[labels[b, t]]))
    return alpha * T**2 * np.mean(kls) + (1 - alpha) * np.mean(ces)


def ref_align(hs, ht, ks):
    per_chain = [np.mean([1 - _cos(hs[b, i], ht[b, i]) for i in range(k)]) for b, k in enumerate(ks) if k >= 1]
    return float(np.mean(per_chain)) if per_chain else 0.0


def ref_coherence(hs_proj_fn, hs, ht, ks):
    per_chain = []
    for b, k in enumerate(ks):
        if k < 2:
            continue
        terms = []
        for i in range(k - 1):
            d_s = hs_proj_fn(hs[b, i + 1] - hs[b, i])
            d_t = ht[b, i + 1] - ht[b, i]
            terms.append((1 - _cos(d_s, d_t)) ** 2)
        per_chain.append(np.mean(terms))
    return float(np.mean(per_chain)) if per_chain else 0.0


def _mask(ks, K):
    return torch.arange(K)[None, :] < torch.tensor(ks)[:, None]


# ---- KD --------------------------------------------------------------------------------------
def test_kd_matches_reference_with_masking():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, :2] = -100  # prompt
    labels[2, 3:] = -100  # padding
    out = kd_loss(s, t, labels, alpha=0.7, temperature=4.0)
    assert out.loss.item() == pytest.approx(ref_kd(s.numpy(), t.numpy(), labels.numpy(), 0.7, 4.0), rel=1e-5)


def test_kd_identical_logits_is_pure_ce_term():
    s = torch.randn(2, 4, 6)
    labels = torch.randint(0, 6, (2, 4))
    out = kd_loss(s, s.clone(), labels, alpha=0.7, temperature=4.0)
    assert out.div.item() == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 6), labels.reshape(-1))
    assert out.loss.item() == pytest.approx(0.3 * ce.item(), rel=1e-5)


def test_kd_alpha_zero_is_ce_and_masked_positions_do_not_matter():
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    labels = torch.randint(0, 6, (2, 4))
    labels[:, 0] = -100
    a = kd_loss(s, t, labels, alpha=0.0)
    t2 = t.clone()
    t2[:, 0] += 100.0  # change the teacher only where nothing is supervised
    b = kd_loss(s, t2, labels, alpha=0.7)
    c = kd_loss(s, t, labels, alpha=0.7)
    assert a.loss.item() == pytest.approx(a.ce.item())
    assert b.loss.item() == pytest.approx(c.loss.item())


# ---- alignment and coherence -------------------------------------------------------------------
@pytest.mark.parametrize("ks", [[3, 1, 2], [4, 4], [1, 1], [0, 2, 5]])
def test_align_matches_reference(ks):
    K = max(ks)
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(len(ks), K, 6, generator=g), torch.randn(len(ks), K, 6, generator=g)
    hs[_mask(ks, K).logical_not()] = 1e3  # garbage in padded slots must not leak in
    got = align_loss(hs, ht, _mask(ks, K)).item()
    assert got == pytest.approx(ref_align(hs.numpy(), ht.numpy(), ks), rel=1e-5)


@pytest.mark.parametrize("ks", [[3, 1, 2], [4, 4], [2, 5, 3, 1]])
def test_coherence_matches_reference_with_projection(ks):
    K = max(ks)
    g = torch.Generator().manual_seed(2)
    hs, ht = torch.randn(len(ks), K, 4, generator=g), torch.randn(len(ks), K, 6, generator=g)
    hs[_mask(ks, K).logical_not()] = -7.0
    W = torch.randn(6, 4, generator=g)  # g: student width 4 → teacher width 6
    d_s, m = transitions(hs, _mask(ks, K))
    d_t, _ = transitions(ht, _mask(ks, K))
    got = coherence_loss(d_s @ W.T, d_t, m).item()
    want = ref_coherence(lambda d: W.numpy() @ d, hs.numpy(), ht.numpy(), ks)
    assert got == pytest.approx(want, rel=1e-5)


def test_identical_states_give_zero_and_opposite_give_max():
    h = torch.randn(2, 3, 5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    d, m = transitions(h, mask)
    assert align_loss(h, h, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert coherence_loss(d, d, m).item() == pytest.approx(0.0, abs=1e-6)
    assert align_loss(-h, h, mask).item() == pytest.approx(2.0, abs=1e-6)
    assert coherence_loss(-d, d, m).item() == pytest.approx(4.0, abs=1e-5)  # (1 - (-1))^2


def test_single_step_chains_contribute_nothing_and_never_nan():
    h_s = torch.randn(3, 1, 4, requires_grad=True)
    h_t = torch.randn(3, 1, 4)
    mask = torch.ones(3, 1, dtype=torch.bool)
    d_s, m = transitions(h_s, mask)
    d_t, _ = transitions(h_t, mask)
    loss = coherence_loss(d_s, d_t, m)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()  # still attached to the graph: every parameter gets a (zero) gradient
    assert h_s.grad is not None and torch.all(h_s.grad == 0)
    # In a mixed batch, k = 1 chains are left out of the mean instead of pulling it towards 0.
    hs2, ht2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mixed = _mask([3, 1], 3)
    only_long = _mask([3], 3)
    ds, ms = transitions(hs2, mixed)
    dt, _ = transitions(ht2, mixed)
    ds1, ms1 = transitions(hs2[:1], only_long)
    dt1, _ = transitions(ht2[:1], only_long)
    assert coherence_loss(ds, dt, ms).item() == pytest.approx(coherence_loss(ds1, dt1, ms1).item())


def test_gather_boundaries_picks_positions():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    pos = torch.tensor([[1, 4], [0, 2]])
    out = gather_boundaries(hidden, pos)
    assert torch.equal(out[0, 1], hidden[0, 4]) and torch.equal(out[1, 0], hidden[1, 0])


# ---- divergence choice (forward KL, reverse KL, generalized JSD) -------------------------------
def _np_kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _log_probs(seed, n=5, v=7):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, v, generator=g), -1), torch.log_softmax(torch.randn(n, v, generator=g), -1)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_reference(beta):
    log_s, log_t = _log_probs(3)
    got = token_divergence(log_s, log_t, "jsd", beta)
    for i in range(log_s.shape[0]):
        p_t, p_s = log_t[i].exp().numpy(), log_s[i].exp().numpy()
        m = beta * p_t + (1 - beta) * p_s
        want = beta * _np_kl(p_t, m) + (1 - beta) * _np_kl(p_s, m)
        assert got[i].item() == pytest.approx(want, rel=1e-5)


def test_jsd_endpoints_are_the_two_kls_and_half_is_the_symmetric_jsd():
    log_s, log_t = _log_probs(4)
    fwd = token_divergence(log_s, log_t, "forward_kl")
    rev = token_divergence(log_s, log_t, "reverse_kl")
    torch.testing.assert_close(token_divergence(log_s, log_t, "jsd", 0.0), fwd)
    torch.testing.assert_close(token_divergence(log_s, log_t, "jsd", 1.0), rev)
    # beta = 1/2 is the ordinary Jensen-Shannon divergence: symmetric, bounded by log 2.
    half = token_divergence(log_s, log_t, "jsd", 0.5)
    torch.testing.assert_close(half, token_divergence(log_t, log_s, "jsd", 0.5))
    assert torch.all(half <= math.log(2) + 1e-6) and torch.all(half >= 0)
    for i in range(log_s.shape[0]):
        p_t, p_s = log_t[i].exp().numpy(), log_s[i].exp().numpy()
        assert fwd[i].item() == pytest.approx(_np_kl(p_t, p_s), rel=1e-5)
        assert rev[i].item() == pytest.approx(_np_kl(p_s, p_t), rel=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_every_divergence_is_zero_for_identical_distributions(divergence):
    log_p, _ = _log_probs(5)
    assert token_divergence(log_p, log_p.clone(), divergence, 0.3).abs().max().item() < 1e-6


def test_kd_loss_uses_the_chosen_divergence():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    labels = torch.randint(0, 6, (2, 4), generator=g)
    labels[0, 0] = -100
    rev = kd_loss(s, t, labels, alpha=1.0, temperature=2.0, divergence="reverse_kl")
    mask = labels != -100
    want = token_divergence(
        torch.log_softmax(s[mask] / 2.0, -1), torch.log_softmax(t[mask] / 2.0, -1), "reverse_kl"
    ).mean()
    assert rev.loss.item() == pytest.approx(4.0 * want.item(), rel=1e-5)  # alpha * T^2 * D
    assert rev.div.item() != pytest.approx(kd_loss(s, t, labels, 1.0, 2.0).div.item())
    with pytest.raises(ValueError, match="method.divergence"):
        token_divergence(s[0], t[0], "wasserstein")


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_kd_equals_the_unchunked_loss_and_gradient(divergence, chunk):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 11, 50, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(3, 11, 50, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 11), generator=g)
    labels[:, :3] = -100
    args = dict(alpha=0.6, temperature=2.0, divergence=divergence)
    dense = kd_loss(s, t, labels, **args)
    (grad_dense,) = torch.autograd.grad(dense.loss, s)
    chunked = kd_loss(s, t, labels, chunk_size=chunk, **args)
    (grad_chunked,) = torch.autograd.grad(chunked.loss, s)
    assert chunked.loss.item() == pytest.approx(dense.loss.item(), abs=1e-6)
    assert chunked.div.item() == pytest.approx(dense.div.item(), abs=1e-6)
    assert torch.allclose(grad_chunked, grad_dense, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        kd_loss(s, t, labels, chunk_size=0)
