"""Statistics over seeds, valid at the small n of a sweep (3-10 seeds per arm).

Seeds are the unit of replication: every function here takes one number per seed (a run's chain
accuracy, say). Test questions are not replications of a method: a bootstrap over them measures
how much a fixed set of trained students would move on another test set (``question_bootstrap_ci``),
never whether two methods differ.

Two designs:

* **unpaired** (independent arms): Welch's t-test, its confidence interval for the difference of
  means (Welch-Satterthwaite degrees of freedom), and the exact permutation test of the
  difference of means over every split of the pooled values (``math.comb(n_a + n_b, n_a)``
  splits; exact up to ``EXACT_MAX`` seeds per arm, Monte Carlo beyond);
* **paired** (blocked by seed: arm A's seed s and arm B's seed s share what the seed fixes, the
  student's base checkpoint, its initialisation and the batch order): the paired t-test on the
  per-seed differences, its interval, and the exact sign-flip permutation test (2^n sign patterns).

``mde`` is the minimum detectable effect at the n that was run: the true difference that a
two-sided level-``alpha`` t-test detects with probability ``power``, for the observed spread
(the usual normal-theory approximation with t quantiles). The smallest p an exact permutation test
can give at that n is reported with it: with 3 seeds per arm it is 0.1, so such a test can never
reach 0.05 whatever the data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

EXACT_MAX = 8  # seeds per arm up to which permutation tests enumerate every split
ALPHA = 0.05
POWER = 0.8


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval); the half-width is nan for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan")
    return m, float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def rerun_interval(values, n_new: int | None = None, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t prediction interval for the mean of a rerun of ``n_new`` seeds).

    Where a rerun's mean should land: mean ± t_{n-1} · s · sqrt(1/n + 1/n_new). The confidence
    interval (``mean_ci``) is for the true mean, not for another sample's mean, which carries its own
    noise: a rerun of 5 seeds falls outside the first 5 seeds' 95 % CI one time in eight even when nothing
    differs, and outside this interval one time in twenty.
    """
    n = len(values)
    m, h = mean_ci(values, level)  # t · s · sqrt(1/n), widened by the rerun's own noise
    return m, h * math.sqrt(1 + n / (n if n_new is None else n_new))


def welch(a, b, level: float = 0.95) -> dict:
    """Welch's unequal-variance t-test of mean(a) - mean(b), with its confidence interval."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    delta = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:  # no spread at all: equal means are not different, unequal ones are as far as t goes
        return {"delta": delta, "ci": [delta, delta], "p": 1.0 if delta == 0 else 0.0, "df": float("nan"), "se": 0.0}
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = delta / se
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return {
        "delta": delta,
        "ci": [delta - half, delta + half],
        "p": float(2 * stats.t.sf(abs(t), df)),
        "df": df,
        "se": se,
    }


def paired_t(a, b, level: float = 0.95) -> dict:
    """Paired t-test of the per-block differences a_i - b_i, with their confidence interval."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    delta = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    if se == 0:
        return {"delta": delta, "ci": [delta, delta], "p": 1.0 if delta == 0 else 0.0, "df": d.size - 1, "se": 0.0}
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1)) * se
    return {
        "delta": delta,
        "ci": [delta - half, delta + half],
        "p": float(2 * stats.t.sf(abs(delta / se), d.size - 1)),
        "df": d.size - 1,
        "se": se,
    }


def _two_sided(null: np.ndarray, observed: float, exact: bool) -> float:
    """scipy.stats.permutation_test's two-sided p: twice the smaller one-sided share, at most 1.
    (Monte Carlo: the observed statistic counts as one of the resamples, as scipy does.)"""
    eps = 1e-12 * max(1.0, abs(observed))  # values equal up to rounding count as equal
    greater, less = np.sum(null >= observed - eps), np.sum(null <= observed + eps)
    n = null.size
    if not exact:
        greater, less, n = greater + 1, less + 1, n + 1
    return float(min(1.0, 2 * min(greater, less) / n))


def permutation_p(a, b, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided permutation test of the difference of means, independent arms.

    Exact (every way of splitting the pooled values into groups of the arms' sizes) when both arms
    have at most ``EXACT_MAX`` values, Monte Carlo with ``n_resamples`` beyond; two-sided as in
    ``scipy.stats.permutation_test`` (twice the smaller tail).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pool, na = np.concatenate([a, b]), a.size
    total = pool.sum()
    exact = max(a.size, b.size) <= EXACT_MAX
    if exact:
        splits = np.array(list(itertools.combinations(range(pool.size), na)))
    else:
        splits = np.argsort(np.random.default_rng(seed).random((n_resamples, pool.size)), axis=1)[:, :na]
    sa = pool[splits].sum(1)
    return _two_sided(sa / na - (total - sa) / b.size, float(a.mean() - b.mean()), exact)


def paired_permutation_p(a, b, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation test of the mean per-block difference (exact up to ``EXACT_MAX``
    pairs: every one of the 2^n sign patterns; as ``scipy.stats.permutation_test(permutation_type="samples")``)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    exact = d.size <= EXACT_MAX
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_resamples, d.size))
    return _two_sided(signs @ d / d.size, float(d.mean()), exact)


def min_permutation_p(n_a: int, n_b: int | None = None) -> float:
    """The smallest p a two-sided exact permutation test can reach (twice one extreme arrangement):
    unpaired arms of n_a and n_b, or n_a pairs (n_b None)."""
    return min(1.0, 2 / (2**n_a if n_b is None else math.comb(n_a + n_b, n_a)))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided t-test with standard error ``se`` and ``df`` degrees of
    freedom: (t_{1-alpha/2} + t_{power}) * se."""
    from scipy import stats

    if not (df > 0 and np.isfinite(se)):
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


@dataclass
class Comparison:
    """One arm against the baseline, over seeds."""

    design: str  # "paired by seed" | "unpaired"
    n: int  # seeds of the arm
    n_baseline: int
    delta: float  # mean(arm) - mean(baseline)
    ci95: list[float]  # of delta, from the design's t interval
    p_t: float  # paired t or Welch
    p_permutation: float | None  # exact when both arms have <= EXACT_MAX seeds
    permutation_exact: bool
    min_p_permutation: float | None  # the smallest p the permutation test could give at this n
    mde80: float  # minimum detectable effect, 80 % power, alpha 0.05
    p_welch: float  # Welch's test, also for a paired design (what an unpaired reading would say)

    def asdict(self) -> dict:
        return asdict(self)


def compare(arm: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    """``arm`` and ``baseline`` map seed → value. Paired by seed when both have the same >= 2 seeds
    (a blocked design: the seed fixes the base checkpoint, the initialisation and the batch order),
    else unpaired. None when either arm has fewer than 2 seeds (no spread to test against)."""
    if len(arm) < 2 or len(baseline) < 2:
        return None
    a, b = np.array(list(arm.values())), np.array(list(baseline.values()))
    w = welch(a, b)
    exact = max(len(arm), len(baseline)) <= EXACT_MAX
    if sorted(arm) == sorted(baseline):
        seeds = sorted(arm)
        pa, pb = [arm[s] for s in seeds], [baseline[s] for s in seeds]
        t = paired_t(pa, pb)
        return Comparison(
            "paired by seed",
            len(pa),
            len(pb),
            t["delta"],
            t["ci"],
            t["p"],
            paired_permutation_p(pa, pb),
            exact,
            min_permutation_p(len(pa)) if exact else None,
            mde(t["se"], t["df"]),
            w["p"],
        )
    return Comparison(
        "unpaired",
        len(a),
        len(b),
        w["delta"],
        w["ci"],
        w["p"],
        permutation_p(a, b),
        exact,
        min_permutation_p(len(a), len(b)) if exact else None,
        mde(w["se"], w["df"]),
        w["p"],
    )


def question_bootstrap_ci(a, b, n: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Test-set uncertainty of a difference: a (seeds_a, Q) and b (seeds_b, Q) per-question scores over
    the same Q questions, each question's score averaged over seeds, the paired question differences
    resampled with replacement. It says how far the observed difference could move on another test
    set of the same size for *these trained students*; it is not a test of the methods (seeds are)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    d = a.mean(0) - b.mean(0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"delta": float(d.mean()), "ci": [float(lo), float(hi)], "questions": int(d.size)}
