"""The decision rules: formulas against statsmodels and scipy, and A/A studies through the real code."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from segbench.analysis import stats
from segbench.analysis.decide import Design, decide_family, planned_looks, sequential


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tost_matches_statsmodels_ttost_paired(seed):
    pytest.importorskip("statsmodels")  # a test-only dependency (segbench[test])
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(seed)
    b = rng.normal(0.8, 0.05, 8)
    a = b + rng.normal(0.005, 0.01, 8)
    p, _, _ = ttost_paired(a, b, -0.02, 0.02)
    assert stats.tost_p(a - b, 0.02) == pytest.approx(p)
    # Equivalent at alpha exactly when the 90 % interval lies inside the margin.
    margin = stats.equivalence_margin(a - b)
    assert stats.tost_p(a - b, margin * 1.001) < 0.05 < stats.tost_p(a - b, margin * 0.999)


def test_holm_matches_statsmodels():
    pytest.importorskip("statsmodels")  # a test-only dependency (segbench[test])
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.2, 0.005, float("nan")]
    expected = multipletests(p[:-1], method="holm")[1]
    got = stats.holm(p)
    assert got[:-1] == pytest.approx(list(expected)) and np.isnan(got[-1])


@pytest.mark.parametrize("n, effect", [(3, 0.05), (5, 0.02), (12, 0.01)])
def test_power_and_detectable_difference_match_statsmodels(n, effect):
    pytest.importorskip("statsmodels")  # a test-only dependency (segbench[test])
    from statsmodels.stats.power import TTestPower

    sd = 0.03
    assert stats.power_paired(effect, sd, n) == pytest.approx(
        TTestPower().power(effect_size=effect / sd, nobs=n, alpha=0.05), rel=1e-6
    )
    d = np.random.default_rng(n).normal(0, sd, n)
    mde = stats.detectable_difference(d)
    es = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8)
    assert mde == pytest.approx(es * d.std(ddof=1), rel=1e-4)
    needed = stats.seeds_needed(sd, effect)
    assert stats.power_paired(effect, sd, needed) >= 0.8 > stats.power_paired(effect, sd, needed - 1)


def test_hodges_lehmann_interval_inverts_the_exact_wilcoxon_test():
    d = np.array([0.031, -0.012, 0.044, 0.018, 0.027, 0.009, 0.052, -0.004, 0.021])
    est, lo, hi = stats.hodges_lehmann(d)
    walsh = [(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))]
    assert est == pytest.approx(np.median(walsh))
    p = lambda theta: sps.wilcoxon(d - theta, method="exact").pvalue  # noqa: E731
    eps = 1e-6
    assert p(lo + eps) >= 0.05 and p(hi - eps) >= 0.05  # just inside: not rejected
    assert p(lo - 10 * eps) < 0.05 and p(hi + 10 * eps) < 0.05  # just outside: rejected
    assert np.isnan(stats.hodges_lehmann(d[:5])[1])  # n = 5 cannot reach 95 %


def test_crossed_interval_components_match_statsmodels_mixedlm():
    pytest.importorskip("statsmodels")  # a test-only dependency (segbench[test])
    import pandas as pd
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    seeds, subjects = 6, 10
    cells = (
        0.01
        + rng.normal(0, 0.03, (seeds, 1))
        + rng.normal(0, 0.05, (1, subjects))
        + rng.normal(0, 0.02, (seeds, subjects))
    )
    res = stats.crossed_interval(cells)
    frame = pd.DataFrame(
        [(s, j, cells[s, j]) for s in range(seeds) for j in range(subjects)], columns=["seed", "subj", "d"]
    )
    frame["one"] = 1
    fit = smf.mixedlm(
        "d ~ 1", frame, groups="one", re_formula="0", vc_formula={"seed": "0 + C(seed)", "subj": "0 + C(subj)"}
    ).fit(reml=True)
    vc = dict(zip(fit.model.exog_vc.names, fit.vcomp))
    assert res["components"]["seed"] == pytest.approx(vc["seed"], rel=2e-2)
    assert res["components"]["subject"] == pytest.approx(vc["subj"], rel=2e-2)
    assert res["components"]["residual"] == pytest.approx(fit.scale, rel=2e-2)
    assert res["diff"] == pytest.approx(fit.fe_params.iloc[0])
    # The new-subject interval is wider than the these-subjects one (subjects add variance).
    _, lo, hi = stats.mean_ci(cells.mean(1))
    assert res["high"] - res["low"] > hi - lo


def test_decision_words():
    design = Design(margin=0.02)
    big = [0.05, 0.06, 0.055, 0.048, 0.062, 0.051]
    tiny = [0.001, -0.002, 0.0015, 0.0, -0.001, 0.0005]
    noisy = [0.1, -0.12, 0.05, -0.02, 0.2, -0.15]
    out = decide_family([big, tiny, noisy], design, directions=[-1, 0, 0], converged=[True, True, True])
    assert out[0]["verdict"] == "did not hold"
    assert out[1]["verdict"] == "equivalent within ±0.02"
    assert out[2]["verdict"].startswith("inconclusive at 6 seeds; needs about")
    early = decide_family([big], design, converged=[False])[0]
    assert early["verdict"].startswith("early-training comparison (not converged)") and not early["decided"]


def _heavy_tailed(rng, n):
    """Per-seed differences of two identical arms: t(3) noise plus, now and then, a failed seed."""
    d = 0.03 * rng.standard_t(3, n)
    failed = rng.random(n) < 0.1
    return d + failed * rng.choice((-0.25, 0.25), n)


def _simulate(effect: float, studies: int, rng) -> list[list[dict]]:
    out = []
    for _ in range(studies):
        values: list[float] = []

        def run_round(seeds, values=values):
            values.extend(effect + _heavy_tailed(rng, len(seeds)))

        out.append(
            sequential(run_round, lambda values=values: [list(values)], [0, 1, 2, 3], 4, 20, Design(margin=0.02))
        )
    return out


def test_aa_studies_decide_a_difference_at_most_five_percent_of_the_time():
    rng = np.random.default_rng(2026)
    results = _simulate(0.0, 2000, rng)
    false = sum(r[0]["verdict"] in ("a > b", "a < b") for r in results)
    assert false / len(results) <= 0.05
    assert planned_looks(4, 4, 20) == 5


def test_a_true_effect_is_found_most_of_the_time():
    rng = np.random.default_rng(7)
    results = _simulate(0.09, 300, rng)
    found = sum(r[0]["verdict"] == "a > b" for r in results)
    assert found / len(results) >= 0.8
