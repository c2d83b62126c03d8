"""``segbench compare``: arms over seeds, intervals, paired differences, and figures that show them.

An arm is a setting of the overrides that differ between runs (seeds excluded: the seed is the
replicate). Each run's *result* is its test-split metric of the checkpoint chosen on val; no
number used for a choice is reported as a result. Arms that differ in one key are compared on
the seeds they share: the mean paired difference, its 95 % interval, exact paired tests and the
smallest difference that this many seeds could detect.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats, verdicts
from segbench.analysis.arms import arm_key, label, result, sort_key, varying_keys
from segbench.analysis.decide import Design, Verdict
from segbench.analysis.figures import plot_curves
from segbench.analysis.predictions import prediction_grid
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.study import with_planned_looks
from segbench.errors import SegbenchError, one_line
from segbench.io import write_text


def _final_train_loss(run: Run) -> float | None:
    values = run.scalar("train/loss")[1]
    return float(np.mean(values[-10:])) if len(values) else None


def _train_eval_loss(run: Run) -> float | None:
    return run.metrics.get("val", {}).get("final", {}).get("train_eval_loss")


COLUMNS = (  # (column, how to read it from a run, digits)
    ("test_{m}", lambda r, m: result(r, m, "best"), 3),
    ("test_{m}_last", lambda r, m: result(r, m, "last"), 3),
    ("test_dice_at_0.5", lambda r, m: result(r, "dice_at_0.5"), 3),
    ("test_soft_dice", lambda r, m: result(r, "soft_dice"), 3),
    ("test_auroc", lambda r, m: result(r, "auroc"), 3),
    ("test_ap", lambda r, m: result(r, "ap"), 3),
    ("test_hd95", lambda r, m: result(r, "hd95"), 1),
    ("val_selection", lambda r, m: r.metrics.get("val", {}).get("best", {}).get(r.metrics.get("main_metric")), 3),
    ("train_eval_loss", lambda r, m: _train_eval_loss(r), 4),
    ("final_train_loss", lambda r, m: _final_train_loss(r), 4),
    ("images_per_s", lambda r, m: r.metrics.get("images_per_s"), 1),
)


def summarize(arms: dict[tuple, list[Run]], metric: str) -> list[dict]:
    """One row per arm: mean and 95 % interval over seeds of every column."""
    rows = []
    for key in sorted(arms, key=sort_key):
        runs = arms[key]
        checks = [verdicts.run_convergence(r) for r in runs]
        converged = [c.get("converged") for c in checks]
        folds = sorted({r.overrides.get("data.fold") for r in runs if "data.fold" in r.overrides})
        # The lr the optimizer used (after optim.lr_scaling), not the one the config named.
        row = {
            "arm": label(key),
            "norm": runs[0].metrics.get("norm"),
            "batch_size": runs[0].metrics.get("global_batch_size"),
            "seeds": len({r.metrics.get("seed") for r in runs})
            if not folds
            else f"{len({r.metrics.get('seed') for r in runs})} x {len(folds)} folds",
            "lr": ",".join(sorted({f"{r.metrics.get('lr_applied', r.metrics.get('lr')):.3g}" for r in runs})),
            "steps": ",".join(sorted({str(r.metrics.get("steps")) for r in runs})),
            "converged": f"{sum(c is True for c in converged)}/{len(runs)}"
            + (f" ({sum(c is None for c in converged)} unknown)" if None in converged else ""),
            "failed_seeds": "; ".join(verdicts.failed_seeds(runs)),
            "not_converged": "; ".join(r.path.name for r, c in zip(runs, converged) if c is False),
            "convergence_rechecked": "; ".join(
                r.path.name for r, c in zip(runs, checks) if "stored_check_validations" in c
            ),
        }
        for name, read, _ in COLUMNS:
            col = name.format(m=metric)
            mean, lo, hi = stats.mean_ci(list(verdicts.per_seed(runs, lambda r: read(r, metric)).values()))  # noqa: B023 - called in this iteration
            lo, hi, clipped = verdicts.clip_interval(lo, hi, verdicts.metric_range(col))
            row[col], row[f"{col}_low"], row[f"{col}_high"] = mean, lo, hi
            row[f"{col}_clipped"] = clipped
        rows.append(row)
    return rows


def _cell(row: dict, col: str, digits: int) -> str:
    mean, lo, hi = row.get(col), row.get(f"{col}_low"), row.get(f"{col}_high")
    if mean is None or not np.isfinite(mean):
        return "-"
    if lo is None or not np.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" + ("†" if row.get(f"{col}_clipped") else "")


def _f(value, spec: str = "+.3f") -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def _ci(lo, hi, spec: str = "+.3f") -> str:
    return "-" if lo is None or not np.isfinite(lo) else f"[{format(lo, spec)}, {format(hi, spec)}]"


def _population(p: dict) -> str:
    c = p.get("crossed")
    if not c:
        return "-"
    return f"{_f(c['diff'])} {_ci(c['low'], c['high'])} ({c['subjects']} subjects)"


def _seed_plan(pairs: list[dict], level: float) -> list[str]:
    """Lines planning the seeds each undecided (and converged) comparison needs, from its spread."""
    lines: list[str] = []
    plan = [p for p in pairs if not p["decided"] and not p.get("early")]
    if plan:
        lines += [
            "",
            f"**Seeds planned from these runs as a pilot** (margin ±{pairs[0]['margin']:g}, 80 % power, "
            f"level {level:g}; the per-seed spread of each comparison):",
        ]
        for p in plan:
            need = p["seeds_to_detect_margin"] or "over 1000"
            equiv = p["seeds_for_equivalence"] or "over 1000"
            lines.append(
                f"- {p['a']} vs {p['b']}: inconclusive at n = {p['n']}; about {need} paired seeds to detect a "
                f"difference of {p['margin']:g}, about {equiv} to show equivalence within ±{p['margin']:g}; "
                f"at n = {p['n']} equivalence could be claimed only within "
                f"±{_f(p['equivalence_margin_supported'], '.3f')}."
            )
    return lines


def markdown(rows: list[dict], pairs: list[dict], metric: str, design_note: str = "", scope: str = "subjects") -> str:
    cols = [(name.format(m=metric), digits) for name, _, digits in COLUMNS]
    best_value = max((r[f"test_{metric}"] for r in rows if np.isfinite(r[f"test_{metric}"])), default=None)
    lines = [
        "| arm | seeds | lr applied | steps | converged | " + " | ".join(c for c, _ in cols) + " |",
        "|---" * (5 + len(cols)) + "|",
    ]
    for row in rows:
        # Not bold and not a winner: the verdicts above say whether any difference is resolved.
        mark = (
            " (highest mean)"
            if best_value is not None and row[f"test_{metric}"] == best_value and len(rows) > 1
            else ""
        )
        lines.append(
            f"| {row['arm']}{mark} | {row['seeds']} | {row['lr']} | {row['steps']} | {row['converged']} | "
            + " | ".join(_cell(row, c, d) for c, d in cols)
            + " |"
        )
    lines += ["", "† interval clipped to the metric's range (a t-interval at few seeds can leave it)."]
    failed = [(row["arm"], row["failed_seeds"]) for row in rows if row["failed_seeds"]]
    if failed:
        lines += ["", "**Failed seeds** (val selection metric far below the arm's others; kept in every mean above):"]
        lines += [f"- {arm}: {names}" for arm, names in failed]
    unconverged = [(row["arm"], row["not_converged"]) for row in rows if row["not_converged"]]
    if unconverged:
        lines += ["", "**Runs not at their plateau** (their val curve still gained in its last validations):"]
        lines += [f"- {arm}: {names}" for arm, names in unconverged]
    rechecked = "; ".join(row["convergence_rechecked"] for row in rows if row["convergence_rechecked"])
    if rechecked:
        lines += [
            "",
            f"Convergence judged again on the whole TensorBoard val curve for {rechecked}: their "
            "metrics.json check (format 1) saw only the validations after a resume.",
        ]
    if not pairs:
        return "\n".join(lines)
    level = pairs[0]["level"]
    lines += [
        "",
        f"### Paired differences a - b of test {metric} (best-by-val checkpoint), on shared seeds",
        "",
        f"{design_note}. Family: the {len(pairs)} comparisons below, Holm-adjusted; a verdict needs adjusted "
        f"p < {level:g}. Verdicts use the scope "
        f"**{'these test subjects' if scope == 'subjects' else 'a new subject'}** "
        "(study.scope); the other scope is shown beside it. Scopes: *these subjects* = seeds random, test "
        "subjects fixed (t-interval over per-seed means); *a new subject* = seeds and subjects both random "
        "(crossed variance components, Satterthwaite df).",
        "",
        "| a | b | n | budget | converged | a - b [95% CI] | median | Hodges-Lehmann [rank CI] | t-test p | Holm p | "
        "sign-flip p | TOST p (Holm) | equivalent at n within | detectable (80%) | a new subject: a - b [95% CI] | "
        "verdict |",
        "|---" * 16 + "|",
    ]
    for p in pairs:
        conv = {True: "both", False: "no", None: "unknown"}[p["converged"]]
        lines.append(
            f"| {p['a']} | {p['b']} | {p['n']} | {p['budget'] or 'same batch'} | {conv} | "
            f"{_f(p['diff'])} {_ci(p['low'], p['high'])}{'†' if p['clipped'] else ''} | {_f(p['median'])} | "
            f"{_f(p['hodges_lehmann'])} {_ci(p['hl_low'], p['hl_high'])} | {_f(p['p'], '.3f')} | "
            f"{_f(p['p_holm'], '.3f')} | {_f(p['p_sign_flip'], '.3f')} | {_f(p['p_tost_holm'], '.3f')} | "
            f"±{_f(p['equivalence_margin_supported'], '.3f')} | "
            f"{_f(p['detectable'], '.3f')} | {_population(p)} | {_verdict(p, scope)} |"
        )
    lines += _seed_plan(pairs, level)
    if min((p["n"] for p in pairs), default=0) < verdicts.SMALL_N:
        lines += [
            "",
            f"Note: some comparisons have fewer than {verdicts.SMALL_N} paired seeds; their intervals say "
            "little, and the exact sign-flip test cannot reach p < 0.05 below 6 seeds.",
        ]
    return "\n".join(lines)


def _verdict(p: dict, scope: str) -> str:
    """The verdict in the study's scope; a difference for these subjects that a new subject's
    interval does not support is said to be limited to these subjects."""
    text = p["verdict"]
    crossed = p.get("crossed")
    if scope == "population" and p["decided"] and p.get("kind") is not Verdict.EQUIVALENT and crossed:
        if crossed["low"] <= 0 <= crossed["high"]:
            return f"inconclusive for a new subject (these subjects: {text})"
    return text


def _shared_metric(runs: list[Run]) -> str:
    """The report metric every run names (dice or miou); one line when the runs report different ones."""
    kinds: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        kinds[run.metrics.get("report_metric", "dice")].append(run)
    if len(kinds) > 1:
        shown = "; ".join(f"{m}: {len(rs)} run(s), e.g. {rs[0].path}" for m, rs in sorted(kinds.items()))
        raise SegbenchError(
            f"the runs report different test metrics ({shown}); compare runs of one kind of "
            "target, or name a metric they all have with --metric"
        )
    return next(iter(kinds))


PAIRED_FIELDS = (
    "a b differs_in same n budget converged diff low high median hodges_lehmann hl_low hl_high p p_holm p_tost "
    "p_tost_holm margin equivalence_margin_supported p_sign_flip p_wilcoxon detectable seeds_to_detect_margin "
    "seeds_for_equivalence verdict"
).split()


def _csv(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _runs_to_compare(paths: list[str], metric: str | None, evaluation: str | None) -> tuple[list[Run], str, str]:
    """The runs, the metric every one of them has (one line when not), and what it was scored on."""
    runs = find_runs(paths)
    scored_on = "test-split"
    if evaluation:
        from segbench.analysis.external import with_evaluation

        runs, root = with_evaluation(runs, evaluation)
        scored_on = f"evaluation `{evaluation}` ({root}, subjects no run trained or chose on)"
    metric = metric or _shared_metric(runs)
    lacking = [r for r in runs if result(r, metric) is None]
    if lacking:
        best = lacking[0].metrics.get("test", {}).get("best") or {}
        has = sorted(k for k, v in best.items() if isinstance(v, (int, float)))
        raise SegbenchError(
            f"{lacking[0].path} has no test {metric!r} ({len(lacking)} of {len(runs)} runs lack it); "
            f"its test metrics: {', '.join(has) or 'none'}"
        )
    return runs, metric, scored_on


def _design(runs: list[Run], paths: list[str], margin: float | None) -> tuple[Design, str]:
    """The design the runs declared; a sequential study's looks read from its study.json."""
    declared, note = verdicts.describe_design(runs, margin)
    design, planned = with_planned_looks(declared, paths)
    if planned:  # a sequential study: judged at alpha / looks, as its rounds were
        note += (
            f"; sequential study: {planned['looks']} looks planned ({planned['first']} seeds, then "
            f"{planned['per_round']} per round up to {planned['max_seeds']}), each at alpha/{planned['looks']}"
        )
    return design, note


def _pictures(arms: dict, metric: str, main_metric: str, out_dir: Path, smooth: float) -> str:
    """curves.png and (when the checkpoints are there) predictions.png; the summary's lines for them."""
    plot_curves(arms, metric, main_metric, out_dir, smooth)
    try:
        prediction_grid(arms, {key: label(key) for key in arms}, out_dir, sort_key)
        return "![predictions](predictions.png)\n\n"
    except (SegbenchError, OSError) as err:  # data or checkpoints moved away: the numbers still compare
        (out_dir / "predictions.png").unlink(missing_ok=True)
        return f"(no prediction grid: {one_line(err)})\n\n"


def compare(
    paths: list[str],
    out: str | None = None,
    metric: str | None = None,
    by: list[str] | None = None,
    smooth: float = 0.6,
    margin: float | None = None,
    evaluation: str | None = None,
) -> Path:
    """Write curves.png, by_batch_size.png, summary.md and summary.csv for the runs under ``paths``.

    Args:
        by: the keys that define an arm (default: every override that differs between runs),
            e.g. ``["norm"]`` when each norm was run with options of its own.
        smooth: exponential-moving-average weight of the per-step training loss (TensorBoard's
            default 0.6; 0 draws the raw curve only).
        margin: the equivalence margin, when not the one the runs declared (``study.margin``).
        evaluation: compare each run's ``segbench evaluate`` results of that name (subjects of another
            folder, best checkpoint) instead of its test split.
    """
    if not 0 <= smooth < 1:
        raise SegbenchError(f"--smooth={smooth} must be at least 0 and below 1 (TensorBoard's default is 0.6)")
    if margin is not None and not (np.isfinite(margin) and margin > 0):
        raise SegbenchError(f"--margin={margin} must be a positive number in the metric's units, e.g. 0.02")
    runs, metric, scored_on = _runs_to_compare(paths, metric, evaluation)
    main_metric = runs[0].metrics.get("main_metric", metric)
    varying = list(by) if by else varying_keys(runs)
    arms: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        arms[arm_key(run, varying)].append(run)
    alone = len(paths) == 1 and not (Path(paths[0]) / "metrics.json").exists()
    out_dir = Path(out) if out else (Path(paths[0]) if alone else Path("compare"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(arms, metric, main_metric, out_dir, smooth)
    rows = summarize(arms, metric)
    design, design_note = _design(runs, paths, margin)
    pairs = verdicts.paired_comparisons(arms, metric, result, label, sort_key, design)
    scopes = {(r.config.get("study") or {}).get("scope", "subjects") for r in runs}
    scope = "population" if "population" in scopes else "subjects"
    write_text(out_dir / "summary.csv", _csv(rows, list(rows[0])))
    if pairs:
        write_text(out_dir / "paired.csv", _csv(pairs, PAIRED_FIELDS))
    verdict_lines = [
        f"{p['a']} vs {p['b']}: {_verdict(p, scope)} (a - b {_f(p['diff'])} {_ci(p['low'], p['high'])}, "
        f"n={p['n']}, Holm p={_f(p['p_holm'], '.3f')})"
        for p in pairs
    ]
    write_text(out_dir / "verdicts.txt", "".join(line + "\n" for line in verdict_lines))
    seeds = sorted({r.metrics.get("seed") for r in runs})
    # The verdicts in sentences first: what a reader opened the report for, before any table.
    opening = ("## Verdicts\n\n" + "".join(f"- {line}\n" for line in verdict_lines) + "\n") if verdict_lines else ""
    header = (
        f"# segbench comparison\n\n{len(runs)} runs in {len(arms)} arms, varying: {', '.join(varying)}; "
        f"seeds: {', '.join(map(str, seeds))}.\n\n"
        f"Result: {scored_on} `{metric}` of the checkpoint chosen on val by `{main_metric}`"
        f"{' (sigmoid threshold also chosen on val)' if metric == 'dice' else ''}; "
        "cells are mean [95% t-interval over seeds]. `val_selection` is the val number used to choose and is "
        "not a result. `train_eval_loss`: training images in eval mode, measured alike for every arm.\n\n"
        + opening + "![curves](curves.png)\n\n" + pictures
    )  # fmt: skip
    runs_list = "\n".join(f"- {r.path}" for r in runs)
    write_text(
        out_dir / "summary.md", header + markdown(rows, pairs, metric, design_note, scope) + "\n\n" + runs_list + "\n"
    )
    return out_dir
