"""Verdicts that decide: a difference, an equivalence within a declared margin, or "inconclusive at n,
needs about m" — corrected for the comparisons read together and for planned repeated looks.

The rules, in order, for one comparison of a family (a report section, or every pair `compare`
reads at once), at the per-look level ``alpha / looks`` (Bonferroni over the looks planned before
the first seed ran):

1. An arm that had not converged makes it an *early-training comparison*: the numbers are shown,
   but it is never called held, did not hold or equivalent on final performance.
2. The paired t-test's p, Holm-adjusted over the family, below the level: a difference (its sign
   from the mean; for a claim with a direction, "held" or "did not hold").
3. Else TOST against the declared margin, Holm-adjusted over the family, below the level:
   "equivalent within ±margin".
4. Else "inconclusive at n seeds", with the seeds a pilot of this spread says each answer needs.

``sequential`` runs rounds of seeds through the same rules until every comparison is decided or
the cap is reached; ``tests/test_decide.py`` simulates thousands of A/A studies through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from segbench.analysis import stats


@dataclass(frozen=True)
class Design:
    """What a study declares before it runs.

    Args:
        margin: the smallest difference that matters (±, in the metric's units); equivalence is
            judged against it and seeds are planned to detect it.
        alpha: family-wise error rate over the family and every planned look.
        looks: how many times the seeds will be looked at (1: a fixed-n study).
        power: the power seeds are planned for.
    """

    margin: float = 0.02
    alpha: float = stats.ALPHA
    looks: int = 1
    power: float = stats.POWER

    @property
    def level(self) -> float:
        return self.alpha / self.looks


class Verdict(str, Enum):
    """What a comparison decided; code reads this (``res["kind"]``, with ``res["early"]``), never the
    words of ``res["verdict"]``, which are rendered from it for people to read."""

    HELD = "held"
    DID_NOT_HOLD = "did not hold"
    A_GREATER = "a > b"
    A_LESS = "a < b"
    EQUIVALENT = "equivalent"
    INCONCLUSIVE = "inconclusive"

    @property
    def decided(self) -> bool:
        return self is not Verdict.INCONCLUSIVE


def _difference(sign: int, direction: int) -> Verdict:
    if direction == 0:
        return Verdict.A_GREATER if sign > 0 else Verdict.A_LESS
    return Verdict.HELD if sign == direction else Verdict.DID_NOT_HOLD


def render(res: dict, converged: bool | None = True, unit: str = "seed", names: tuple[str, str] | None = None) -> str:
    """The words of a comparison's verdict (``res``: one result of ``decide_family``); ``unit``: what
    one paired replicate is (a seed; a (seed, held-out site) unit in the site study); ``names``: what
    a and b are, for a difference found without a claimed direction ("BN higher than no norm")."""
    kind, n = res["kind"], res["n"]
    if kind is Verdict.EQUIVALENT:
        text = f"equivalent within ±{res['margin']:g}"
    elif kind in (Verdict.A_GREATER, Verdict.A_LESS) and names:
        high, low = names if kind is Verdict.A_GREATER else names[::-1]
        text = f"{high} higher than {low}"
    elif kind is not Verdict.INCONCLUSIVE:
        text = kind.value
    elif n < 2:
        text = f"inconclusive at {n} {unit}{'s' if n != 1 else ''} (no interval)"
    else:
        need = [m for m in (res["seeds_to_detect_margin"], res["seeds_for_equivalence"]) if m]
        text = f"inconclusive at {n} {unit}s" + (f"; needs about {min(need)} paired {unit}s" if need else "")
    if res["early"]:
        what = "not converged" if converged is False else "convergence unknown"
        text = f"early-training comparison ({what}): {text} at this budget, not a verdict on final performance"
    return text


def decide_family(
    diff_sets: list,
    design: Design,
    directions: list[int] | None = None,
    converged: list[bool | None] | None = None,
    plan: bool = True,
) -> list[dict]:
    """Judge each comparison of one family (``diff_sets``: per-seed differences a - b of each).

    ``directions``: +1 (claim a > b), -1 (a < b) or 0 (no claim) per comparison; ``converged``:
    whether both arms reached their plateau (False or None: an early-training comparison).
    Returns one dict per comparison with the verdict, raw and Holm-adjusted p of the difference
    test and of TOST, the rank-based estimate and (``plan``) the seeds the plan says it needs:
    to detect a difference of the margin at the design's power, and to show equivalence within it
    (skipped with ``plan=False``, as in the intermediate looks of a sequential study).
    """
    k = len(diff_sets)
    directions = directions or [0] * k
    converged = converged if converged is not None else [True] * k
    p_diff = [stats.t_test_p(d) for d in diff_sets]
    p_tost = [stats.tost_p(d, design.margin) for d in diff_sets]
    adj_diff, adj_tost = stats.holm(p_diff), stats.holm(p_tost)
    out = []
    for i, raw in enumerate(diff_sets):
        d = np.asarray([v for v in raw if v is not None and np.isfinite(v)], dtype=float)
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        hl, hl_lo, hl_hi = stats.hodges_lehmann(d, design.level)
        res = {
            "n": n,
            "diff": mean,
            "median": float(np.median(d)) if n else math.nan,
            "hodges_lehmann": hl,
            "hl_low": hl_lo,
            "hl_high": hl_hi,
            "p": p_diff[i],
            "p_holm": adj_diff[i],
            "p_tost": p_tost[i],
            "p_tost_holm": adj_tost[i],
            "margin": design.margin,
            "level": design.level,
            "family": k,
            "equivalence_margin_supported": stats.equivalence_margin(d, design.level),
            "seeds_to_detect_margin": None,
            "seeds_for_equivalence": None,
        }
        if plan:
            res["seeds_to_detect_margin"] = stats.seeds_needed(sd, design.margin, design.level, design.power)
            res["seeds_for_equivalence"] = stats.seeds_for_equivalence(sd, design.margin, design.level, design.power)
        if n < 2:
            kind = Verdict.INCONCLUSIVE
        elif adj_diff[i] < design.level:
            kind = _difference(int(np.sign(mean)), directions[i])
        elif adj_tost[i] < design.level:
            kind = Verdict.EQUIVALENT
        else:
            kind = Verdict.INCONCLUSIVE
        early = not converged[i]
        res.update(kind=kind, early=early, decided=kind.decided and not early)
        res["verdict"] = render(res, converged[i])
        out.append(res)
    return out


def declared_design(runs: list, looks: int = 1) -> Design:
    """The design the runs' experiment file declared (its ``study.margin``, 0.02 when silent), judged
    at alpha / ``looks`` for a study that planned ``looks`` looks before its first run."""
    if looks < 1:
        raise ValueError(f"looks must be at least 1 (got {looks})")
    return Design(margin=float((runs[0].config.get("study") or {}).get("margin", 0.02)), looks=looks)


def family_level(design: Design) -> str:
    """A table's words for its level: nothing for a fixed-n study, the per-look level otherwise."""
    if design.looks == 1:
        return ""
    return f" at level {design.level:.3g} (alpha {design.alpha:g} over {design.looks} planned looks)"


def planned_looks(first: int, per_round: int, max_seeds: int) -> int:
    """Looks of a sequential study: after ``first`` seeds, then every ``per_round`` up to ``max_seeds``."""
    if first < 2 or per_round < 1 or max_seeds < first:
        raise ValueError(
            f"need first >= 2, per_round >= 1 and max_seeds >= first (got {first}, {per_round}, {max_seeds})"
        )
    return 1 + math.ceil((max_seeds - first) / per_round)


def sequential(
    run_round: Callable[[list[int]], None],
    read: Callable[[], list[list[float]]],
    seeds: list[int],
    per_round: int,
    max_seeds: int,
    design: Design,
    directions: list[int] | None = None,
    converged: Callable[[], list] | None = None,
    report: Callable[[int, list[dict]], None] | None = None,
) -> list[dict]:
    """Add seeds in rounds until every comparison is decided or ``max_seeds`` seeds have run.

    ``run_round(seeds)`` trains the new seeds of every arm; ``read()`` returns the per-seed
    differences of each comparison over all seeds so far. The looks are planned from the first
    round, the cap and the round size, and ``design.looks`` is set to them: stopping early is
    then no longer optional stopping. Returns the last look's verdicts.
    """
    seeds = list(seeds)
    design = Design(design.margin, design.alpha, planned_looks(len(seeds), per_round, max_seeds), design.power)
    next_seed, used, look = max(seeds) + 1, [], 0
    while True:
        run_round(seeds)
        used += seeds
        look += 1
        diffs, flags = read(), converged() if converged else None
        verdicts = decide_family(diffs, design, directions, flags, plan=False)
        left = max_seeds - len(used)
        # More seeds cannot turn an early-training comparison into a verdict on final performance.
        if all(v["decided"] or v["early"] for v in verdicts) or left <= 0 or look >= design.looks:
            verdicts = decide_family(diffs, design, directions, flags)  # the last look, with its seed plan
            if report:
                report(look, verdicts)
            return verdicts
        if report:
            report(look, verdicts)
        seeds = list(range(next_seed, next_seed + min(per_round, left)))
        next_seed += len(seeds)
