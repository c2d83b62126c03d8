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
from scipy.optimize import brentq

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


def power_paired(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at ``alpha`` for a true mean difference ``effect``
    (noncentral t, exact; statsmodels' ``TTestPower`` gives the same)."""
    if n < 2 or not sd > 0:
        return math.nan
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = sps.t.ppf(1 - alpha / 2, df)
    power = float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else 1.0  # scipy's nct gives NaN far in the tail, where power is 1


def detectable_difference(diffs, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a paired t-test at ``alpha`` finds with ``power``, given this
    spread and this many seeds (solved on the noncentral t, not the normal approximation)."""
    d = _clean(diffs)
    if len(d) < 2 or not d.std(ddof=1) > 0:
        return math.nan
    sd, n = float(d.std(ddof=1)), len(d)
    return float(brentq(lambda e: power_paired(e, sd, n, alpha) - power, 1e-12 * sd, 200 * sd / math.sqrt(n)))


def seeds_needed(sd: float, effect: float, alpha: float = ALPHA, power: float = POWER, cap: int = 1000) -> int | None:
    """Paired seeds a two-sided t-test at ``alpha`` needs to find ``effect`` with ``power``, for a
    per-seed spread ``sd`` (a pilot's); None above ``cap``."""
    if not (sd > 0 and effect > 0):
        return None
    # Start just below the normal approximation (the t needs a few more), then step up.
    guess = ((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / effect) ** 2
    for n in range(max(2, int(guess) - 1), cap + 1):
        if power_paired(effect, sd, n, alpha) >= power:
            return n
    return None


def seeds_for_equivalence(
    sd: float, margin: float, alpha: float = ALPHA, power: float = POWER, cap: int = 1000
) -> int | None:
    """Paired seeds for TOST at ``alpha`` to show equivalence within ``margin`` with ``power`` when
    the true difference is 0: the smallest n with (t_{1-alpha} + t_{1-(1-power)/2}) sd / sqrt(n) <=
    margin (Chow, Shao & Wang, Sample Size Calculations, 3.2.3); None above ``cap``."""
    if not (sd > 0 and margin > 0):
        return None
    guess = ((sps.norm.ppf(1 - alpha) + sps.norm.ppf(1 - (1 - power) / 2)) * sd / margin) ** 2
    for n in range(max(2, int(guess) - 1), cap + 1):
        df = n - 1
        if (sps.t.ppf(1 - alpha, df) + sps.t.ppf(1 - (1 - power) / 2, df)) * sd / math.sqrt(n) <= margin:
            return n
    return None


def t_test_p(diffs) -> float:
    """Two-sided one-sample t-test p-value of mean difference 0 (scipy); NaN below 2 values."""
    d = _clean(diffs)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if not sd > 0:
        return 0.0 if d.mean() != 0 else 1.0
    t = d.mean() / (sd / math.sqrt(len(d)))  # scipy's ttest_1samp, without its overhead (tests compare)
    return float(2 * sps.t.sf(abs(t), len(d) - 1))


def tost_p(diffs, margin: float) -> float:
    """Two one-sided t-tests (Schuirmann; Lakens 2017) of |mean difference| >= ``margin``: the larger
    one-sided p. Below ``alpha`` means the (1 - 2 alpha) interval lies inside (-margin, +margin)."""
    d = _clean(diffs)
    if len(d) < 2 or not margin > 0:
        return math.nan
    sd = d.std(ddof=1)
    if not sd > 0:
        return 0.0 if abs(d.mean()) < margin else 1.0
    se, df = sd / math.sqrt(len(d)), len(d) - 1
    p_low = sps.t.sf((d.mean() + margin) / se, df)  # H0: mean <= -margin
    p_high = sps.t.cdf((d.mean() - margin) / se, df)  # H0: mean >= +margin
    return float(max(p_low, p_high))


def equivalence_margin(diffs, alpha: float = ALPHA) -> float:
    """Smallest margin TOST at ``alpha`` would call these seeds equivalent within: the farther end
    of the (1 - 2 alpha) t-interval from 0."""
    _, lo, hi = mean_ci(diffs, 2 * alpha)
    return float(max(abs(lo), abs(hi))) if np.isfinite(lo) else math.nan


def holm(pvalues) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input's order (NaN stays NaN, outside the family)."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), math.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= t) for t = 0 .. n(n+1)/2 under H0 (exact, by counting sign patterns)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0**n


def hodges_lehmann(diffs, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(estimate, low, high): the median of the Walsh averages and the exact rank-based interval
    (the inverted Wilcoxon signed-rank test; Hollander & Wolfe, 3.3). Bounds are NaN when n is too
    small for the interval to reach 1 - alpha (n < 6 at 95 %)."""
    d = _clean(diffs)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    walsh = np.sort((d[:, None] + d[None, :])[np.triu_indices(n)] / 2)
    estimate = float(np.median(walsh))
    cdf = _signed_rank_cdf(n)
    # k = the largest count with P(T+ <= k - 1) <= alpha / 2; the interval is [W_(k), W_(M + 1 - k)].
    k = int(np.searchsorted(cdf, alpha / 2, side="right"))
    if k < 1:
        return estimate, math.nan, math.nan
    return estimate, float(walsh[k - 1]), float(walsh[len(walsh) - k])


def crossed_interval(cells, alpha: float = ALPHA) -> dict:
    """Mean paired difference and its interval for "a new subject": seeds and subjects both random.

    ``cells`` is a (seeds, subjects) array of per-subject differences. Model: d_sj = mu + a_s + b_j
    + e_sj, crossed random effects, estimated by two-way ANOVA (method of moments; REML gives the
    same on balanced data when no component is clipped). Var(mean) = s2_seed / S + s2_subject / J +
    s2_resid / (S J); degrees of freedom by Satterthwaite.
    """
    x = np.asarray(cells, dtype=float)
    n_seed, n_subj = x.shape
    mean = float(x.mean())
    if n_seed < 2 or n_subj < 2:
        return {"diff": mean, "low": math.nan, "high": math.nan, "df": math.nan, "components": {}}
    seed_means, subj_means = x.mean(1), x.mean(0)
    ms_seed = n_subj * ((seed_means - mean) ** 2).sum() / (n_seed - 1)
    ms_subj = n_seed * ((subj_means - mean) ** 2).sum() / (n_subj - 1)
    resid = x - seed_means[:, None] - subj_means[None, :] + mean
    ms_res = (resid**2).sum() / ((n_seed - 1) * (n_subj - 1))
    s2_seed, s2_subj = max((ms_seed - ms_res) / n_subj, 0.0), max((ms_subj - ms_res) / n_seed, 0.0)
    # Var(mean) = sum_i c_i MS_i: each unclipped component adds (MS - MS_res) / (S J), the residual
    # MS_res / (S J); Satterthwaite's df follows from that combination.
    keep_seed, keep_subj = s2_seed > 0, s2_subj > 0
    cells_n = n_seed * n_subj
    terms = [
        (keep_seed / cells_n, ms_seed, n_seed - 1),
        (keep_subj / cells_n, ms_subj, n_subj - 1),
        ((1 - keep_seed - keep_subj) / cells_n, ms_res, (n_seed - 1) * (n_subj - 1)),
    ]
    var = sum(c * m for c, m, _ in terms)
    denom = sum((c * m) ** 2 / f for c, m, f in terms if c and m > 0)
    df = var**2 / denom if denom > 0 else math.inf
    half = float(sps.t.ppf(1 - alpha / 2, max(df, 1.0)) * math.sqrt(var))
    return {
        "diff": mean,
        "low": mean - half,
        "high": mean + half,
        "df": float(df),
        "components": {"seed": s2_seed, "subject": s2_subj, "residual": float(ms_res)},
    }


def paired(a: dict, b: dict) -> dict:
    """Compare arm ``a`` with arm ``b`` on the seeds both have: ``{seed: value}`` each.

    Returns the per-seed differences a - b, their mean with a 95 % t-interval, the exact
    sign-flip and Wilcoxon p-values and the smallest detectable difference.
    """
    seeds = sorted(set(a) & set(b))
    pairs = [
        (a[s], b[s]) for s in seeds if a[s] is not None and b[s] is not None and np.isfinite(a[s]) and np.isfinite(b[s])
    ]
    diffs = [x - y for x, y in pairs]
    mean, lo, hi = mean_ci(diffs)
    return {
        "n": len(diffs),
        "diff": mean,
        "low": lo,
        "high": hi,
        "p_sign_flip": sign_flip_p(diffs),
        "p_wilcoxon": wilcoxon_p(diffs),
        "detectable": detectable_difference(diffs),
        "diffs": diffs,
    }


def describe(result: dict, unit: str = "") -> str:
    """One line: difference [interval], p-values, n, detectable difference."""
    return (
        f"{result['diff']:+.3f}{unit} [95% CI {result['low']:+.3f}, {result['high']:+.3f}], "
        f"n={result['n']} paired seeds, sign-flip p={result['p_sign_flip']:.3f}, "
        f"Wilcoxon p={result['p_wilcoxon']:.3f}, detectable at 80% power: {result['detectable']:.3f}"
    )
