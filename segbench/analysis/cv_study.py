"""Paired contrasts by k-fold cross-validation: every subject tested once per arm and seed.

A sweep of arms over ``data.folds=k data.fold=0,...,k-1`` (one seed or more) tests each subject once
per (arm, seed), by the fold that held it out. The arms of one (seed, fold) share its split, data
order and initial weights, so their difference on that fold is paired. The unit judged is the
(seed, fold): its test subjects' mean per-subject value. A fold's subjects share one trained net
and its training noise, so subjects are not independent replicates; per-subject differences are
shown beside the verdict but never judged as if they were.

Scope, said in the table: these subjects, at these training seeds. With one seed the interval
covers the folds, not a new training seed: a cross-check of a seeded test-split study.

    segbench report cv <sweep> ... --reference cause=none --out out
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.arms import arm_key, label, sort_key, varying_keys
from segbench.analysis.decide import decide_family, declared_design, family_level, render
from segbench.analysis.external import bootstrap_ci
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.verdicts import contrast_converged, run_convergence
from segbench.errors import SegbenchError

FOLD_KEYS = ("data.fold", "data.folds")


def _fold(run: Run) -> tuple[int, int]:
    data = run.config.get("data") or {}
    folds, fold = data.get("folds"), data.get("fold")
    if not folds:
        raise SegbenchError(f"report cv: {run.path} is not a cross-validation run (its data.folds is not set)")
    return int(fold or 0), int(folds)


def per_subject(run: Run, metric: str) -> dict[str, float]:
    """The run's test subjects and their ``metric`` (best-by-val checkpoint, val-chosen threshold)."""
    cases = run.metrics.get("test", {}).get("best", {}).get("per_case") or {}
    return {case: float(v[metric][0]) for case, v in cases.items() if v.get(metric)}


def arms(runs: list[Run], metric: str) -> dict[tuple, dict[tuple[int, int], Run]]:
    """``{arm: {(seed, fold): run}}``, checking that each (arm, seed) tests every subject at most once
    and that every (arm, seed) has all k folds."""
    varying = [k for k in varying_keys(runs) if k not in FOLD_KEYS]
    by_arm: dict[tuple, dict[tuple[int, int], Run]] = defaultdict(dict)
    folds = set()
    for run in runs:
        fold, k = _fold(run)
        if not per_subject(run, metric):
            cases = run.metrics.get("test", {}).get("best", {}).get("per_case") or {}
            scored = sorted({m for v in cases.values() for m in v}) or ["none"]
            raise SegbenchError(
                f"report cv: --metric {metric}: {run.path} has no per-subject {metric} on test; "
                f"it has: {', '.join(scored)}"
            )
        folds.add(k)
        by_arm[arm_key(run, varying)][(int(run.metrics["seed"]), fold)] = run
    if len(folds) > 1:
        raise SegbenchError(f"report cv: the runs mix {sorted(folds)} folds; read one cross-validation at a time")
    (k,) = folds
    for arm, units in by_arm.items():
        for seed in {s for s, _ in units}:
            have = sorted(f for s, f in units if s == seed)
            if have != list(range(k)):
                raise SegbenchError(
                    f"report cv: {label(arm)}, seed {seed} has folds {have} of 0-{k - 1}; "
                    "finish the missing folds or leave that seed out"
                )
            seen: dict[str, int] = {}
            for f in have:
                for case in per_subject(units[(seed, f)], metric):
                    if case in seen:
                        raise SegbenchError(
                            f"report cv: subject {case} is tested by folds {seen[case]} and {f} of "
                            f"{label(arm)}, seed {seed}: not a cross-validation"
                        )
                    seen[case] = f
    return dict(by_arm)


def _reference(by_arm: dict, reference: str) -> tuple:
    if len(by_arm) < 2:
        raise SegbenchError(
            f"report cv: the runs hold one arm: nothing to set against --reference {reference} "
            "(scripts/cv_summary.py summarises a single arm)"
        )
    matches = [a for a in by_arm if reference in {f"{k}={v}" for k, v in a} or reference == label(a)]
    if len(matches) != 1:
        valid = ", ".join(sorted(label(a) for a in by_arm))
        raise SegbenchError(f"report cv: --reference {reference!r} names no single arm; the arms are: {valid}")
    return matches[0]


def contrasts(sweeps: list[str], reference: str, metric: str = "dice") -> dict:
    """Each arm minus the reference arm, per (seed, fold) and per subject, judged in one family
    (Holm, TOST at the experiment file's margin; an unconverged arm makes the contrast early-training)."""
    runs = find_runs(list(sweeps))
    by_arm = arms(runs, metric)
    ref = _reference(by_arm, reference)
    design = declared_design(runs)
    rows = []
    for arm in sorted((a for a in by_arm if a != ref), key=sort_key):
        units = sorted(set(by_arm[arm]) & set(by_arm[ref]))
        fold_diffs, subject_diffs = [], []
        for unit in units:
            a, b = per_subject(by_arm[arm][unit], metric), per_subject(by_arm[ref][unit], metric)
            shared = sorted(set(a) & set(b))
            fold_diffs.append(float(np.mean([a[c] for c in shared]) - np.mean([b[c] for c in shared])))
            subject_diffs += [a[c] - b[c] for c in shared]
        _, low, high = stats.mean_ci(fold_diffs)
        rows.append(
            {
                "label": f"{label(arm)} − {label(ref)}",
                "names": (label(arm), label(ref)),
                "units": units,
                "diffs": fold_diffs,
                "low": low,
                "high": high,
                "subject_diffs": subject_diffs,
                "converged": contrast_converged(list(by_arm[arm].values()), list(by_arm[ref].values())),
            }
        )
    judged = decide_family([r["diffs"] for r in rows], design, None, [r["converged"] for r in rows])
    for row, verdict in zip(rows, judged):
        row.update(verdict)
        row["verdict"] = render(row, row["converged"], unit="fold", names=row["names"])
    per_arm = {}
    for arm in sorted(by_arm, key=sort_key):
        by_subject = defaultdict(list)  # a subject's value averaged over seeds: subjects are the bootstrap's unit
        for run in by_arm[arm].values():
            for case, value in per_subject(run, metric).items():
                by_subject[case].append(value)
        values = np.array([np.mean(v) for v in by_subject.values()])
        per_arm[label(arm)] = {
            "runs": len(by_arm[arm]),
            "seeds": sorted({s for s, _ in by_arm[arm]}),
            "subjects": len(values),
            "mean": float(values.mean()),
            "ci": bootstrap_ci(values, np.mean),
            "converged": sum(run_convergence(r).get("converged") is True for r in by_arm[arm].values()),
        }
    return {"rows": rows, "arms": per_arm, "metric": metric, "margin": design.margin, "level": family_level(design)}


def markdown(numbers: dict) -> str:
    seeds = sorted({s for a in numbers["arms"].values() for s in a["seeds"]})
    lines = [
        f"Cross-validated test {numbers['metric']} per subject (best-by-val checkpoint, val-chosen threshold), "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; each subject tested once per arm and "
        f"seed by the fold that held it out. Unit judged: a (seed, fold), its test subjects' mean; margin "
        f"±{numbers['margin']:g} declared in the experiment file; Holm over the {len(numbers['rows'])} "
        f"contrast{'s' if len(numbers['rows']) != 1 else ''}"
        f"{numbers['level']}. Scope: these subjects at these training seeds.",
        "",
        f"| arm | runs | subjects | mean per-subject {numbers['metric']} [95 % CI, bootstrap over subjects] | "
        "runs at their plateau |",
        "|---|---|---|---|---|",
    ]
    for name, a in numbers["arms"].items():
        lo, hi = a["ci"]
        lines.append(
            f"| {name} | {a['runs']} | {a['subjects']} | {a['mean']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{a['converged']}/{a['runs']} |"
        )
    lines += [
        "",
        "| contrast | mean over folds [95 % CI] | folds below 0 | subjects below 0 (not judged) | Holm p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in numbers["rows"]:
        d, s = np.asarray(r["diffs"]), np.asarray(r["subject_diffs"])
        lines.append(
            f"| {r['label']} | {r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {int((d < 0).sum())} of {len(d)} "
            f"| {int((s < 0).sum())} of {len(s)} | {r['p_holm']:.3f} | **{r['verdict']}** |"
        )
    return "\n".join(lines)


def write_table(sweeps: list[str], out: str, reference: str, metric: str = "dice") -> Path:
    numbers = contrasts(sweeps, reference, metric)  # bad runs or a bad reference fail before the folder exists
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cv.md").write_text(markdown(numbers) + "\n")
    return folder / "cv.md"
