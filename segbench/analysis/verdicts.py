"""What ``compare`` concludes from the arms: pairs, convergence, failed seeds, both scopes, verdicts.

A pair of arms is compared when they differ in one *factor*: a key and its sub-keys count as one
(``norm=batch norm.momentum=0.001`` against ``norm=none`` differs in the factor ``norm``). The
family is every pair one ``compare`` reads; verdicts follow ``segbench.analysis.decide`` with the
margin the study declared in its config (``study.margin``) before it ran.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from segbench.analysis import stats
from segbench.analysis.decide import Design, decide_family
from segbench.analysis.runs import Run
from segbench.train.convergence import plateau

# Where each metric lives: intervals are clipped to it (and the clipping said) so a Dice interval
# cannot read [-2.18, 3.30] at n = 2.
METRIC_RANGE = {
    "dice": (0.0, 1.0),
    "dice_at_0.5": (0.0, 1.0),
    "soft_dice": (0.0, 1.0),
    "dice_pooled": (0.0, 1.0),
    "ap": (0.0, 1.0),
    "auroc": (0.0, 1.0),
    "miou": (0.0, 1.0),
    "hd95": (0.0, math.inf),
    "loss": (0.0, math.inf),
}
SMALL_N = 5  # below this many seeds an interval says little: the table says so


def metric_range(column: str) -> tuple[float, float]:
    for name, bounds in sorted(METRIC_RANGE.items(), key=lambda kv: -len(kv[0])):
        if name in column:
            return bounds
    return -math.inf, math.inf


def clip_interval(lo: float, hi: float, bounds: tuple[float, float]) -> tuple[float, float, bool]:
    """The interval inside ``bounds``; True when a bound was cut."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return lo, hi, False
    new_lo, new_hi = max(lo, bounds[0]), min(hi, bounds[1])
    return new_lo, new_hi, (new_lo, new_hi) != (lo, hi)


def factor(key: str, varying: list[str]) -> str:
    """The factor a key belongs to: its nearest varying parent (``norm.momentum`` -> ``norm``)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in varying:
            return parent
    return key


def per_seed(runs: list[Run], read) -> dict:
    """``{seed: value}`` of an arm; the folds of a cross-validated seed (``data.fold``) pooled into
    one value, weighted by their test subjects, so every subject counts once and a fold is not a seed."""
    parts: dict = defaultdict(list)
    for run in runs:
        value = read(run)
        if value is not None and np.isfinite(value):
            weight = run.metrics.get("test", {}).get("best", {}).get("cases") or 1
            parts[run.metrics.get("seed")].append((float(value), float(weight)))
    return {seed: sum(v * w for v, w in items) / sum(w for _, w in items) for seed, items in parts.items()}


def run_convergence(run: Run) -> dict:
    """The run's convergence check: stored by the trainer, else computed from its val history.

    A resumed run of metrics.json format 1 (its checkpoints did not keep the val history) stored a
    check of the validations after its resume only; its TensorBoard curve holds them all, so when
    that curve has more validations than the stored check counted, the check is made again on it.
    From format 2 on, the stored check judges the whole curve.
    """
    stored = run.metrics.get("convergence")
    main = run.metrics.get("main_metric", "dice_tuned")
    steps, values = run.scalar(f"val/{main}")
    recheck = run.metrics.get("format", 1) < 2 and int(np.isfinite(values).sum()) > (
        (stored or {}).get("validations") or 0
    )
    if stored and recheck:  # the check counts finite values
        full = plateau([{"step": int(s), main: float(v)} for s, v in zip(steps, values)], main)
        return {**full, "stored_check_validations": stored.get("validations")}
    if stored:
        return stored
    return plateau(run.metrics.get("val", {}).get("history", []), main)


CONVERGED_SHARE = 0.8  # an arm has converged when at least this share of its runs has


def arm_converged(runs: list[Run]) -> bool | None:
    """Whether an arm reached its plateau: at least 80 % of its runs converged (one straggler in
    five, e.g. a 0.012 gain against a 0.01 rule, does not make the arm early-training; the table
    shows k/n); None when a run could not be checked."""
    flags = [run_convergence(r).get("converged") for r in runs]
    if not flags or any(f is None for f in flags):
        return None
    return sum(f is True for f in flags) >= CONVERGED_SHARE * len(flags)


def contrast_converged(*arms: list[Run]) -> bool | None:
    """Whether every arm a contrast reads reached its plateau (``arm_converged``): False when one did
    not, None when one could not be checked."""
    flags = [arm_converged(runs) for runs in arms]
    return False if False in flags else (None if None in flags else True)


def failed_seeds(runs: list[Run]) -> list[str]:
    """Runs whose val selection metric sits far below their arm's others: a failed seed is a finding.

    Far: more than 3.5 robust standard deviations (1.4826 MAD) below the arm's median and at least
    0.05 below it (Iglewicz & Hoaglin's modified z-score; the floor keeps a tight arm's 0.01 dip quiet).
    """
    scored = [(r, r.metrics.get("val", {}).get("best", {}).get(r.metrics.get("main_metric"))) for r in runs]
    scored = [(r, float(v)) for r, v in scored if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(scored) < 3:
        return []
    x = np.array([v for _, v in scored])
    median, mad = float(np.median(x)), float(np.median(np.abs(x - np.median(x)))) * 1.4826
    limit = median - max(3.5 * mad, 0.05)
    return [
        f"{r.path.name} (seed {r.metrics.get('seed')}: val {v:.3f}, arm median {median:.3f})"
        for r, v in scored
        if v < limit
    ]


def _case_scores(run: Run, metric: str) -> dict[str, float]:
    per_case = run.metrics.get("test", {}).get("best", {}).get("per_case") or {}
    key = "dice" if metric.startswith("dice") else metric
    return {case: float(np.mean(v[key])) for case, v in per_case.items() if key in v}


def crossed(runs_a: list[Run], runs_b: list[Run], metric: str) -> dict | None:
    """The "new subject" scope: per-(seed, subject) differences, seeds and subjects crossed random."""
    if metric not in ("dice", "hd95"):
        return None  # per-subject scores exist for Dice (test split at its val threshold) and HD95
    by_seed = []
    for runs in (runs_a, runs_b):
        merged: dict = defaultdict(dict)  # a cross-validated seed's folds together hold every subject once
        for r in runs:
            merged[r.metrics.get("seed")].update(_case_scores(r, metric))
        by_seed.append(merged)
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    cases = sorted(set.intersection(*[set(by_seed[k][s]) for s in seeds for k in (0, 1)])) if seeds else []
    if len(seeds) < 2 or len(cases) < 2:
        return None
    cells = np.array([[by_seed[0][s][c] - by_seed[1][s][c] for c in cases] for s in seeds])
    return {**stats.crossed_interval(cells), "subjects": len(cases)}


def paired_comparisons(
    arms: dict[tuple, list[Run]], metric: str, result, label, sort_key, design: Design
) -> list[dict]:
    """Every pair of arms that differ in one factor, paired on shared seeds, judged as one family."""
    keys = sorted(arms, key=sort_key)
    varying = [k for k, _ in keys[0]] if keys else []
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            differ = [k for (k, va), (_, vb) in zip(a, b) if va != vb]
            factors = sorted({factor(k, varying) for k in differ})
            if len(factors) != 1:
                continue
            by_seed = [per_seed(arms[k], lambda r: result(r, metric)) for k in (a, b)]
            res = stats.paired(*by_seed)
            lo, hi, clipped = clip_interval(res["low"], res["high"], (-_span(metric), _span(metric)))
            res.update(
                {
                    "a": label(a),
                    "b": label(b),
                    "differs_in": factors[0],
                    "low": lo,
                    "high": hi,
                    "clipped": clipped,
                    "same": label(tuple(kv for kv in a if factor(kv[0], varying) != factors[0])),
                    "converged": _both(arm_converged(arms[a]), arm_converged(arms[b])),
                    "crossed": crossed(arms[a], arms[b], metric),
                    "budget": _budget_note(arms[a], arms[b]),
                }
            )
            out.append(res)
    for res, decision in zip(
        out, decide_family([p["diffs"] for p in out], design, converged=[p["converged"] for p in out])
    ):
        res.update(decision)
    return out


def _span(metric: str) -> float:
    lo, hi = metric_range(metric)
    return hi - lo


def _both(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _budget_note(runs_a: list[Run], runs_b: list[Run]) -> str:
    """For arms of different batch sizes: equal steps, equal images, or neither (said, not implied)."""
    batch = {r.metrics.get("global_batch_size") for r in runs_a + runs_b}
    if len(batch) < 2:
        return ""
    steps = {r.metrics.get("steps") for r in runs_a + runs_b}
    images = {
        r.metrics.get("images_seen") or (r.metrics.get("steps", 0) * (r.metrics.get("global_batch_size") or 0))
        for r in runs_a + runs_b
    }
    if len(images) == 1:
        return f"equal images ({images.pop()})"
    if len(steps) == 1:
        return f"equal steps ({steps.pop()}), unequal images"
    return "unequal steps and images (e.g. until plateau)"


def describe_design(runs: list[Run], margin: float | None) -> tuple[Design, str]:
    """The design the verdicts use: the margin the runs' config declared, or one given to compare."""
    declared = {float(m) for r in runs if (m := (r.config.get("study") or {}).get("margin")) is not None}
    if margin is not None:
        note = (
            f"margin ±{margin:g} given to compare (not the one the study declared: read it as a sensitivity check)"
            if declared and margin not in declared
            else f"margin ±{margin:g}"
        )
        return Design(margin=margin), note
    if len(declared) == 1:
        value = declared.pop()
        return Design(margin=value), f"margin ±{value:g}, declared in the study's config (study.margin) before it ran"
    if declared:
        value = min(declared)
        return Design(margin=value), f"runs declared different margins; the smallest, ±{value:g}, is used"
    return Design(), f"margin ±{Design().margin:g} (the default; these runs declared none)"
