"""The RTD paper's diagnostics: CKA against the reference values, torchmetrics AUROC, a full run's report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtd_lab.diagnostics import BoundaryCKA, least_squares_map, linear_cka, step_chain_gap
from rtd_lab.tasks.train import train


def test_linear_cka_matches_the_reference_implementation():
    # The example of Kornblith et al.'s reference notebook (google-research/representation_similarity)
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    assert float(linear_cka(x, y)) == pytest.approx(0.55761, abs=5e-6)
    assert float(linear_cka(x, y, debiased=True)) == pytest.approx(0.51346, abs=5e-6)


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert float(linear_cka(x, x @ q * 3.0 + 1.0)) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert float(linear_cka(x, torch.randn(50, 5, generator=g))) < 0.5  # unrelated, other width
    with pytest.raises(ValueError, match="more than 3"):
        linear_cka(x[:3], x[:3], debiased=True)


def test_boundary_cka_is_per_depth_and_step_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    h_s = torch.randn(40, 3, 6, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    h_t = torch.cat([2.0 * h_s[:, :1] @ q, torch.randn(40, 2, 6, generator=g)], dim=1)
    mask = torch.ones(40, 3, dtype=torch.bool)
    mask[:20, 2] = False  # the first 20 chains have 2 steps, the others 3
    depth = torch.tensor([2] * 20 + [3] * 20)
    h_s[:20, 2] = float("nan")  # padding must never be read
    metric = BoundaryCKA(min_examples=10)
    metric.update(h_s[:25], h_t[:25], mask[:25], depth[:25])
    metric.update(h_s[25:], h_t[25:], mask[25:], depth[25:])
    out = metric.compute()
    assert {d: set(v) for d, v in out.items()} == {2: {1, 2}, 3: {1, 2, 3}}
    assert out[2][1] == pytest.approx(1.0, abs=1e-6) and out[3][1] == pytest.approx(1.0, abs=1e-6)  # rotated, scaled
    assert out[3][2] < 0.8


def test_pooling_depths_would_inflate_cka():
    """Why BoundaryCKA groups by depth: one shared 'last step or not' direction makes pooled CKA ≈ 1."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(200, 6, generator=g), torch.randn(200, 6, generator=g)  # unrelated states
    last = (torch.arange(200) < 100).double().unsqueeze(1) * 50.0  # a big offset on half the chains
    assert float(linear_cka(s, t)) < 0.2
    assert float(linear_cka(s + last, t + last)) > 0.9


def test_least_squares_map_recovers_a_linear_relation():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(200, 5, generator=g)
    w = torch.randn(7, 5, generator=g)
    proj = least_squares_map(s, s @ w.T)
    assert torch.allclose(proj.weight, w, atol=1e-4)


def test_step_chain_gap():
    m = {"step_acc": 0.9, "chain_acc": 0.5, "step_acc/depth_1": 1.0, "chain_acc/depth_1": 1.0}
    assert step_chain_gap(m, [1, 2]) == {"all": pytest.approx(0.4), "depth_1": 0.0}


def test_a_run_reports_every_diagnostic(make_cfg):
    results = train(
        make_cfg("+experiment=standard_kd", "diagnostics.self_consistency_k=3", "data.benchmark.n_test_per_depth=12")
    )
    diag = results["diagnostics"]
    assert diag["cka_depth"] == 3 and set(diag["cka"]) == {1, 2, 3}  # the deepest chains' curve
    assert all(-1e-6 <= v <= 1 + 1e-6 for v in diag["cka"].values()) and diag["cka_by_depth"][3] == diag["cka"]
    assert diag["transition_projection"].startswith("least squares")
    assert diag["n_steps"] >= 0 and diag["unreadable_traces"] >= 0
    sc = diag["self_consistency"]
    assert sc["k"] == 3 and 0.0 <= sc["answer_acc"] <= 1.0
    for bits in ("8bit", "4bit"):  # on the CPU, both
        assert diag["quantized"][bits]["status"] == "ok" and diag["quantized"][bits]["quantized_layers"]
        assert 0.0 <= diag["quantized"][bits]["metrics"]["chain_acc/depth_3"] <= 1.0
    assert set(diag["step_chain_gap"]) >= {"all"}


def test_rtd_projects_transitions_with_its_learned_map(make_cfg):
    diag = train(make_cfg("curriculum=none", "diagnostics.self_consistency_k=0", "diagnostics.quantize=[]"))[
        "diagnostics"
    ]
    assert diag["transition_projection"] == "the method's learned g"
    assert "self_consistency" not in diag and diag["quantized"] == {}
