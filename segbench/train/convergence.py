"""Has a run's validation curve flattened? The check behind "converged" in metrics.json and compare.

A comparison of final performance needs arms at their plateau; before it, it compares how fast
each arm starts (Wu & He and nnU-Net compare converged runs). The rule, on the main val metric:

    no improvement above ``epsilon`` (0.01 Dice by default) in the last k validations, k the
    larger of 3 and a quarter of them: the best of the last k is less than ``epsilon`` above the
    best before them.

Beside it the least-squares trend of the last half of the validations, projected over as many
steps again, with its 90 % interval: a reader sees whether the tail still rose. Fewer than
``min_points`` validations: convergence is unknown (None).

``trainer.until_plateau`` stops a run only when both hold: the rule above and a flat trend (the
projection below ``epsilon``). The rule alone stopped a noisy constant-lr FCN run whose best val
mIoU had not moved for three validations while its trend still projected +0.23 (REPORT 4a).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

MIN_POINTS = 4
EPSILON = 0.01


def plateau(history: list[dict], metric: str, epsilon: float = EPSILON, min_points: int = MIN_POINTS) -> dict:
    """The convergence check of one run's ``history`` (``[{"step": s, metric: v}, ...]``)."""
    points = [
        (float(h["step"]), float(h[metric]))
        for h in history
        if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])
    ]
    rule = f"no improvement above {epsilon:g} in the last max(3, n/4) validations"
    if len(points) < min_points:
        return {
            "converged": None,
            "rule": rule,
            "validations": len(points),
            "reason": f"{len(points)} validation(s); the check needs at least {min_points} (lower trainer.val_every)",
        }
    tail = points[len(points) // 2 :] if len(points) // 2 >= 3 else points[-3:]
    steps, values = np.array([p[0] for p in tail]), np.array([p[1] for p in tail])
    fit = sps.linregress(steps, values)
    span = float(steps[-1] - steps[0])
    half = float(sps.t.ppf(0.95, len(tail) - 2) * fit.stderr) if len(tail) > 2 else math.nan
    k = max(3, math.ceil(len(points) / 4))
    improvement = max(p[1] for p in points[-k:]) - max(p[1] for p in points[:-k])
    gain = float(fit.slope * span)
    return {
        "converged": bool(improvement < epsilon),
        "rule": rule,
        "validations": len(points),
        "last_k": k,
        "improvement_last_k": float(improvement),
        "projected_gain": gain,
        "projected_gain_high": float((fit.slope + half) * span),
        "trend_flat": gain < epsilon,
        "trend_from_step": int(steps[0]),
        "epsilon": epsilon,
    }


def plateau_reached(check: dict) -> bool:
    """Where ``trainer.until_plateau`` stops: ``check`` (from ``plateau``) converged, trend flat too."""
    # An unknown check (too few validations) has no trend and is no plateau.
    return bool(check.get("converged")) and check["trend_flat"]
