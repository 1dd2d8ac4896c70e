"""Statistics over seeds: every p-value and interval against scipy on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rtd_lab.stats import (
    compare,
    mde,
    mean_ci,
    min_permutation_p,
    paired_permutation_p,
    paired_t,
    permutation_p,
    question_bootstrap_ci,
    rerun_interval,
    welch,
)

A = [0.712, 0.695, 0.731, 0.688, 0.705]
B = [0.681, 0.702, 0.664, 0.671, 0.690]


def test_a_rerun_lands_outside_the_prediction_interval_one_time_in_twenty():
    """The CI is for the true mean: a same-sized rerun's mean falls outside it far more often than 5 %."""
    rng = np.random.default_rng(0)
    first, rerun = rng.normal(size=(20_000, 5)), rng.normal(size=(20_000, 5))
    outside_pi = outside_ci = 0
    for a, b in zip(first, rerun, strict=True):
        m, h = rerun_interval(a)
        outside_pi += abs(b.mean() - m) > h
        outside_ci += abs(b.mean() - m) > mean_ci(a)[1]
    assert 0.04 < outside_pi / 20_000 < 0.06
    assert 0.10 < outside_ci / 20_000 < 0.14
    assert rerun_interval([0.0, 1.0, 2.0], n_new=3)[1] == pytest.approx(mean_ci([0.0, 1.0, 2.0])[1] * math.sqrt(2))
    assert np.isnan(rerun_interval([0.5])[1])


def test_mean_ci_is_student_t():
    m, h = mean_ci([0.0, 1.0, 2.0])
    assert m == 1.0 and h == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    assert np.isnan(mean_ci([0.5])[1])


def test_welch_equals_scipy():
    w = welch(A, B)
    ref = sps.ttest_ind(A, B, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    lo, hi = ref.confidence_interval(0.95)
    assert w["ci"] == pytest.approx([lo, hi], rel=1e-10)
    assert w["delta"] == pytest.approx(np.mean(A) - np.mean(B))


def test_paired_t_equals_scipy():
    t = paired_t(A, B)
    ref = sps.ttest_rel(A, B)
    assert t["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert t["ci"] == pytest.approx(list(ref.confidence_interval(0.95)), rel=1e-10)


def _diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def test_exact_permutation_equals_scipy():
    ref = sps.permutation_test(
        (A, B), _diff, permutation_type="independent", n_resamples=np.inf, alternative="two-sided"
    )
    assert permutation_p(A, B) == pytest.approx(ref.pvalue, rel=1e-12)
    a3, b4 = [0.1, 0.5, 0.4], [0.2, 0.25, 0.3, 0.9]  # unequal sizes
    ref = sps.permutation_test((a3, b4), _diff, permutation_type="independent", n_resamples=np.inf)
    assert permutation_p(a3, b4) == pytest.approx(ref.pvalue, rel=1e-12)


def test_exact_paired_permutation_equals_scipy():
    ref = sps.permutation_test((A, B), _diff, permutation_type="samples", n_resamples=np.inf)
    assert paired_permutation_p(A, B) == pytest.approx(ref.pvalue, rel=1e-12)


def test_three_seeds_a_side_can_never_reach_005():
    # Every a-value above every b-value: the most extreme split there is.
    assert permutation_p([0.9, 0.91, 0.92], [0.1, 0.11, 0.12]) == pytest.approx(0.1)
    assert min_permutation_p(3, 3) == pytest.approx(0.1)
    assert min_permutation_p(5) == pytest.approx(2 / 32)  # paired, 5 blocks


def test_mde_is_the_80_percent_power_shift():
    # With sigma known and a large df the t quantiles approach z: (1.96 + 0.8416) * se.
    assert mde(1.0, 1e7) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    # Simulated power of Welch's test at the MDE of 5 vs 5 seeds with SD 0.03 is about 80 %.
    rng = np.random.default_rng(0)
    se = math.sqrt(2 * 0.03**2 / 5)
    effect = mde(se, 8)
    hits = [
        sps.ttest_ind(rng.normal(effect, 0.03, 5), rng.normal(0, 0.03, 5), equal_var=False).pvalue < 0.05
        for _ in range(4000)
    ]
    assert 0.74 < np.mean(hits) < 0.86


def test_compare_pairs_blocked_designs_only():
    arm = dict(enumerate(A))
    base = dict(enumerate(B))
    paired = compare(arm, base)
    assert paired.design == "paired by seed" and paired.p_t == pytest.approx(sps.ttest_rel(A, B).pvalue)
    assert paired.p_welch == pytest.approx(sps.ttest_ind(A, B, equal_var=False).pvalue)
    unpaired = compare({s + 10: v for s, v in arm.items()}, base)
    assert unpaired.design == "unpaired" and unpaired.p_t == pytest.approx(paired.p_welch)
    assert unpaired.permutation_exact and unpaired.min_p_permutation == pytest.approx(2 / 252)
    assert compare({0: 0.5}, base) is None


def test_question_bootstrap_is_an_interval_not_a_test():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(3, 400)).astype(float)
    out = question_bootstrap_ci(a, a)
    assert out["delta"] == 0 and out["ci"] == [0.0, 0.0] and out["questions"] == 400
    b = np.clip(a - (rng.random((3, 400)) < 0.3), 0, 1)
    out = question_bootstrap_ci(a, b)
    assert out["ci"][0] < out["delta"] < out["ci"][1] and out["ci"][0] > 0
