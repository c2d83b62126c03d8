"""Comparison statistics against scipy on known inputs, and the verdict rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from segbench.analysis import stats

SAMPLES = [
    np.array([0.61, 0.55, 0.72, 0.58, 0.66]),
    np.array([0.1, -0.3, 0.25, 0.05, 0.4, -0.1, 0.2]),
    np.random.default_rng(0).normal(0.02, 0.05, 9),
]


@pytest.mark.parametrize("x", SAMPLES)
def test_mean_interval_is_scipys_t_interval(x):
    mean, lo, hi = stats.mean_ci(x)
    ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
    assert mean == pytest.approx(x.mean()) and lo == pytest.approx(ci.low) and hi == pytest.approx(ci.high)


@pytest.mark.parametrize("x", SAMPLES)
def test_paired_difference_matches_scipys_paired_t_and_tests(x):
    b = np.linspace(0.3, 0.5, len(x))
    a = b + x
    res = stats.paired(dict(enumerate(a)), dict(enumerate(b)))
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert res["n"] == len(x) and res["diff"] == pytest.approx(x.mean())
    assert (res["low"], res["high"]) == pytest.approx((ci.low, ci.high))
    assert res["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a - b).pvalue)
    exact = sps.permutation_test(
        (a - b,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    assert res["p_sign_flip"] == pytest.approx(exact.pvalue)


def test_pairs_only_seeds_both_arms_have():
    res = stats.paired({0: 1.0, 1: 2.0, 2: 3.0, 5: 9.0}, {0: 0.5, 1: 1.0, 2: 1.0, 7: 0.0})
    assert res["n"] == 3 and res["diffs"] == [0.5, 1.0, 2.0]


def test_sign_flip_cannot_go_below_two_over_two_to_the_n():
    assert stats.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert stats.sign_flip_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)


def test_detectable_difference_has_about_the_stated_power():
    d = SAMPLES[1]
    mde = stats.detectable_difference(d)
    n, sd = len(d), d.std(ddof=1)
    crit = sps.t.ppf(0.975, n - 1)
    power = 1 - sps.nct.cdf(crit, n - 1, mde / (sd / np.sqrt(n))) + sps.nct.cdf(-crit, n - 1, mde / (sd / np.sqrt(n)))
    assert 0.75 < power < 0.85


@pytest.mark.parametrize("x", SAMPLES)
def test_t_test_p_is_scipys(x):
    assert stats.t_test_p(x) == pytest.approx(sps.ttest_1samp(x, 0).pvalue)
