"""Statistics for comparisons over seeds: intervals, exact paired tests, detectable differences, verdicts.

Arms of a comparison are paired by seed (the seed fixes data order, augmentation and the
initial weights the arms share), so a difference is judged from the per-seed differences,
not from two means side by side (Bouthillier et al., MLSys 2021).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8


def _clean(values) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; the bounds are NaN with fewer than 2 values."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def sign_flip_p(diffs, max_exact: int = 16, draws: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean difference 0.

    Exact (all 2^n sign patterns) up to ``max_exact`` pairs, else ``draws`` random patterns.
    The observed pattern and its mirror count, so p >= 2 / 2^n: 0.0625 with 5 pairs, 0.031 with 6;
    below 6 seeds this test cannot reach p < 0.05, whatever the data.
    """
    d = _clean(diffs)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, n))
        signs[0] = 1.0
    means = np.abs(signs @ d) / n
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def wilcoxon_p(diffs) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value (scipy); NaN when every difference is 0."""
    d = _clean(diffs)
    if len(d) == 0 or not np.any(d != 0):
        return math.nan
    return float(sps.wilcoxon(d, alternative="two-sided", method="auto").pvalue)


def detectable_difference(diffs, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a paired t-test at ``alpha`` finds with ``power``, given this spread."""
    d = _clean(diffs)
    if len(d) < 2:
        return math.nan
    df = len(d) - 1
    return float((sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) * d.std(ddof=1) / math.sqrt(len(d)))


def paired(a: dict, b: dict) -> dict:
    """Compare arm ``a`` with arm ``b`` on the seeds both have: ``{seed: value}`` each.

    Returns the per-seed differences a - b, their mean with a 95 % t-interval, the exact
    sign-flip and Wilcoxon p-values and the smallest detectable difference.
    """
    seeds = sorted(set(a) & set(b))
    pairs = [(a[s], b[s]) for s in seeds
             if a[s] is not None and b[s] is not None and np.isfinite(a[s]) and np.isfinite(b[s])]
    diffs = [x - y for x, y in pairs]
    mean, lo, hi = mean_ci(diffs)
    return {"n": len(diffs), "diff": mean, "low": lo, "high": hi, "p_sign_flip": sign_flip_p(diffs),
            "p_wilcoxon": wilcoxon_p(diffs), "detectable": detectable_difference(diffs), "diffs": diffs}


def verdict(result: dict, direction: int) -> str:
    """"held" when the interval of the difference excludes 0 on the claimed side (``direction`` +1: a > b,
    -1: a < b), "did not hold" when it excludes the claimed side, else "inconclusive at n seeds"."""
    lo, hi, n = result["low"], result["high"], result["n"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"inconclusive at {n} seed{'s' if n != 1 else ''} (no interval)"
    if (direction > 0 and lo > 0) or (direction < 0 and hi < 0):
        return "held"
    if (direction > 0 and hi < 0) or (direction < 0 and lo > 0):
        return "did not hold"
    return f"inconclusive at {n} seeds"


def describe(result: dict, unit: str = "") -> str:
    """One line: difference [interval], p-values, n, detectable difference."""
    return (f"{result['diff']:+.3f}{unit} [95% CI {result['low']:+.3f}, {result['high']:+.3f}], "
            f"n={result['n']} paired seeds, sign-flip p={result['p_sign_flip']:.3f}, "
            f"Wilcoxon p={result['p_wilcoxon']:.3f}, detectable at 80% power: {result['detectable']:.3f}")
