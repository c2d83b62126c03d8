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
from segbench.analysis.decide import Design
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.study import read_design
from segbench.analysis.predictions import prediction_grid
from segbench.errors import SegbenchError, one_line
from segbench.io import save_figure, write_text

# Keys that never define an arm: the replicate, and settings that do not change what is learned.
IGNORED_KEYS = {"seed", "data.fold", "trainer.device", "trainer.progress", "trainer.threads", "hydra.launcher.n_jobs",
                "data.num_workers", "trainer.log_images", "hydra.sweep.dir", "hydra.run.dir"}
LINESTYLES = ["-", "--", ":", "-."]
# Okabe & Ito's colour-blind-safe palette (black last: it is also the text colour).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
BATCH_KEYS = ("data.batch_size", "bs")


def _colour_group(key: tuple) -> tuple:
    """An arm without its batch size: one colour per norm (or cause), one line style per batch."""
    return tuple((k, v) for k, v in key if k not in BATCH_KEYS) or key


def _config_value(run: Run, dotted: str) -> str:
    node = run.config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node) if node is not None else "-"


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (seeds excluded: they are replicates)."""
    keys = sorted({k for r in runs for k in r.overrides} - IGNORED_KEYS)
    varying = [k for k in keys if len({r.overrides.get(k, _config_value(r, k)) for r in runs}) > 1]
    return varying or ["norm"]


def arm_key(run: Run, varying: list[str]) -> tuple:
    return tuple((k, run.overrides.get(k, _config_value(run, k))) for k in varying)


def _label(key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in key)


def _sort_key(key: tuple):
    """Numbers as numbers (batch 2 before 16), so tables read in order."""
    out = []
    for _, v in key:
        try:
            out.append((0, float(v), ""))
        except ValueError:
            out.append((1, 0.0, v))
    return out


def result(run: Run, metric: str, checkpoint: str = "best") -> float | None:
    """The run's test-split ``metric`` for its ``best``-by-val (or ``last``) checkpoint."""
    value = run.metrics.get("test", {}).get(checkpoint, {}).get(metric)
    return None if value is None else float(value)


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
    for key in sorted(arms, key=_sort_key):
        runs = arms[key]
        converged = [verdicts.run_convergence(r).get("converged") for r in runs]
        folds = sorted({r.overrides.get("data.fold") for r in runs if "data.fold" in r.overrides})
        # The lr the optimizer used (after optim.lr_scaling), not the one the config named.
        row = {"arm": _label(key), "norm": runs[0].metrics.get("norm"),
               "batch_size": runs[0].metrics.get("global_batch_size"),
               "seeds": len({r.metrics.get("seed") for r in runs}) if not folds else
               f"{len({r.metrics.get('seed') for r in runs})} x {len(folds)} folds",
               "lr": ",".join(sorted({f"{r.metrics.get('lr_applied', r.metrics.get('lr')):.3g}" for r in runs})),
               "steps": ",".join(sorted({str(r.metrics.get("steps")) for r in runs})),
               "converged": f"{sum(c is True for c in converged)}/{len(runs)}"
                            + (f" ({sum(c is None for c in converged)} unknown)" if None in converged else ""),
               "failed_seeds": "; ".join(verdicts.failed_seeds(runs))}
        for name, read, _ in COLUMNS:
            col = name.format(m=metric)
            mean, lo, hi = stats.mean_ci(list(verdicts.per_seed(runs, lambda r: read(r, metric)).values()))
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


def markdown(rows: list[dict], pairs: list[dict], metric: str, design_note: str = "", scope: str = "subjects") -> str:
    cols = [(name.format(m=metric), digits) for name, _, digits in COLUMNS]
    best_value = max((r[f"test_{metric}"] for r in rows if np.isfinite(r[f"test_{metric}"])), default=None)
    lines = ["| arm | seeds | lr applied | steps | converged | " + " | ".join(c for c, _ in cols) + " |",
             "|---" * (5 + len(cols)) + "|"]
    for row in rows:
        # Not bold and not a winner: the verdicts above say whether any difference is resolved.
        mark = " (highest mean)" if best_value is not None and row[f"test_{metric}"] == best_value and len(rows) > 1 else ""
        lines.append(f"| {row['arm']}{mark} | {row['seeds']} | {row['lr']} | {row['steps']} | {row['converged']} | "
                     + " | ".join(_cell(row, c, d) for c, d in cols) + " |")
    lines += ["", "† interval clipped to the metric's range (a t-interval at few seeds can leave it)."]
    failed = [(row["arm"], row["failed_seeds"]) for row in rows if row["failed_seeds"]]
    if failed:
        lines += ["", "**Failed seeds** (val selection metric far below the arm's others; kept in every mean above):"]
        lines += [f"- {arm}: {names}" for arm, names in failed]
    if not pairs:
        return "\n".join(lines)
    level = pairs[0]["level"]
    lines += ["", f"### Paired differences a - b of test {metric} (best-by-val checkpoint), on shared seeds", "",
              f"{design_note}. Family: the {len(pairs)} comparisons below, Holm-adjusted; a verdict needs adjusted "
              f"p < {level:g}. Verdicts use the scope **{'these test subjects' if scope == 'subjects' else 'a new subject'}** "
              "(study.scope); the other scope is shown beside it. Scopes: *these subjects* = seeds random, test "
              "subjects fixed (t-interval over per-seed means); *a new subject* = seeds and subjects both random "
              "(crossed variance components, Satterthwaite df).", "",
              "| a | b | n | budget | converged | a - b [95% CI] | median | Hodges-Lehmann [rank CI] | t-test p | Holm p | "
              "sign-flip p | TOST p (Holm) | equivalent at n within | detectable (80%) | a new subject: a - b [95% CI] | "
              "verdict |", "|---" * 16 + "|"]
    for p in pairs:
        conv = {True: "both", False: "no", None: "unknown"}[p["converged"]]
        lines.append(f"| {p['a']} | {p['b']} | {p['n']} | {p['budget'] or 'same batch'} | {conv} | "
                     f"{_f(p['diff'])} {_ci(p['low'], p['high'])}{'†' if p['clipped'] else ''} | {_f(p['median'])} | "
                     f"{_f(p['hodges_lehmann'])} {_ci(p['hl_low'], p['hl_high'])} | {_f(p['p'], '.3f')} | "
                     f"{_f(p['p_holm'], '.3f')} | {_f(p['p_sign_flip'], '.3f')} | {_f(p['p_tost_holm'], '.3f')} | ±{_f(p['equivalence_margin_supported'], '.3f')} | "
                     f"{_f(p['detectable'], '.3f')} | {_population(p)} | {_verdict(p, scope)} |")
    plan = [p for p in pairs if not p["decided"] and not p.get("early")]
    if plan:
        lines += ["", f"**Seeds planned from these runs as a pilot** (margin ±{pairs[0]['margin']:g}, 80 % power, "
                      f"level {level:g}; the per-seed spread of each comparison):"]
        for p in plan:
            need = p["seeds_to_detect_margin"] or "over 1000"
            equiv = p["seeds_for_equivalence"] or "over 1000"
            lines.append(f"- {p['a']} vs {p['b']}: inconclusive at n = {p['n']}; about {need} paired seeds to detect a "
                         f"difference of {p['margin']:g}, about {equiv} to show equivalence within ±{p['margin']:g}; "
                         f"at n = {p['n']} equivalence could be claimed only within "
                         f"±{_f(p['equivalence_margin_supported'], '.3f')}.")
    if min((p["n"] for p in pairs), default=0) < verdicts.SMALL_N:
        lines += ["", f"Note: some comparisons have fewer than {verdicts.SMALL_N} paired seeds; their intervals say "
                      "little, and the exact sign-flip test cannot reach p < 0.05 below 6 seeds."]
    return "\n".join(lines)


def _verdict(p: dict, scope: str) -> str:
    """The verdict in the study's scope; a difference for these subjects that a new subject's
    interval does not support is said to be limited to these subjects."""
    text = p["verdict"]
    crossed = p.get("crossed")
    if scope == "population" and p["decided"] and not text.startswith("equivalent") and crossed:
        if crossed["low"] <= 0 <= crossed["high"]:
            return f"inconclusive for a new subject (these subjects: {text})"
    return text


def _ema(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """TensorBoard-style exponential smoothing with its start-up bias removed."""
    out, acc = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def _band(runs: list[Run], tag: str, smooth: float = 0.0):
    """Steps all seeds share; mean and 95 % t-interval over seeds (NaN bounds for one seed)."""
    series = [r.scalar(tag) for r in runs if len(r.scalar(tag)[0])]
    if not series:
        return None
    steps = sorted(set.intersection(*[set(s.tolist()) for s, _ in series]))
    if not steps:
        return None
    values = np.array([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in series])
    if smooth:
        values = np.array([_ema(v, smooth) for v in values])
    ci = np.array([stats.mean_ci(values[:, j]) for j in range(values.shape[1])])
    return np.array(steps, float), ci[:, 0], ci[:, 1], ci[:, 2]


def _plot(arms: dict[tuple, list[Run]], metric: str, main_metric: str, out: Path, smooth: float = 0.6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_runs = [r for runs in arms.values() for r in runs]
    groups = sorted({_colour_group(k) for k in arms}, key=_sort_key)
    batches = sorted({r.metrics.get("global_batch_size") for r in all_runs})
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    styles = {b: LINESTYLES[i % len(LINESTYLES)] for i, b in enumerate(batches)}
    # (tag, smoothed, title, log scale, y label, range of the metric)
    panels = [("train/loss", True, f"train loss (per step, batch statistics; EMA {smooth:g} over the raw mean, faint)",
               True, "loss (log)", (0, np.inf)),
              ("train/loss_eval_mode", False, "train loss in eval mode (fixed training images)", True, "loss (log)",
               (0, np.inf)),
              ("val/loss", False, "val loss", True, "loss (log)", (0, np.inf)),
              (f"val/{main_metric}", False, f"val {main_metric} (selection metric; triangles: where each seed's "
               "best-by-val checkpoint was taken)", False, main_metric, (0, 1))]
    by_images = len(batches) > 1  # steps of different batch sizes are not comparable; images seen are
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)))
    marked = False  # the checkpoint marks' legend entry, once
    for ax, (tag, smoothed, title, log, ylabel, (low, high)) in zip(axes, panels):
        for key in sorted(arms, key=_sort_key):
            runs = arms[key]
            band = _band(runs, tag, smooth if smoothed else 0.0)
            if band is None:
                continue
            x, mean, lo, hi = band
            first = runs[0].metrics
            scale = float(first.get("global_batch_size") or 1) if by_images else 1.0  # steps -> images seen
            x = x * scale
            style = dict(color=colours[_colour_group(key)], linestyle=styles[first.get("global_batch_size")])
            if smoothed and smooth:
                raw = _band(runs, tag)
                # Faint, and kept out of the axis limits: one raw dip must not squash the smoothed curves.
                ax.plot(raw[0] * scale, raw[1], alpha=0.25, linewidth=0.6, scalex=False, scaley=False, **style)
            ax.plot(x, mean, label=f"{_label(key)} (n={len(runs)})", marker=None if smoothed else "o", markersize=3,
                    **style)
            if np.isfinite(lo).any():
                floor = np.nanmin(mean[mean > 0]) / 10 if log and (mean > 0).any() else low
                # A t-band can leave the metric's range at few seeds; drawn clipped to it.
                ax.fill_between(x, np.clip(lo, floor, high), np.clip(hi, floor, high), alpha=0.18, color=style["color"])
            if not smoothed and tag.startswith("val/") and tag != "val/loss":
                chosen = [(r.metrics.get("val", {}).get("best") or {}).get("step") for r in runs]
                at = dict(zip(x / scale, mean))
                marks = [(c * scale, at[c]) for c in chosen if c in at]
                if marks:
                    ax.scatter(*zip(*marks), marker="v", s=40, color=style["color"], edgecolor="black", zorder=3,
                               label=None if marked else "best-by-val checkpoint (per seed)")
                    marked = True
        ax.set_title(title + "; band: 95% CI over seeds", fontsize=9)
        ax.set_xlabel("images seen" if by_images else "step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log and ax.lines:
            ax.set_yscale("log")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    if marked:
        axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(out / "curves.png", fig)
    plt.close(fig)

    if len(batches) < 2:
        (out / "by_batch_size.png").unlink(missing_ok=True)  # one batch size: nothing to draw
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, group in enumerate(groups):
        points = defaultdict(list)
        for key, runs in arms.items():
            if _colour_group(key) == group:
                for r in runs:
                    points[r.metrics.get("global_batch_size")].append(result(r, metric))
        xs = sorted(points)
        ci = np.array([stats.mean_ci(points[b]) for b in xs])
        yerr = np.nan_to_num(np.abs(ci[:, 1:] - ci[:, :1]).T)
        # Arms side by side at each batch size (a few per cent apart on the log axis), so bars do not overlap.
        shift = 2 ** ((i - (len(groups) - 1) / 2) * 0.06)
        label = _label(group)
        ax.errorbar([b * shift for b in xs], ci[:, 0], yerr=yerr, marker="o", capsize=3, label=label, color=colours[group])
        for b in xs:  # every seed, so a reader sees the spread the interval summarises
            ax.scatter([b * shift] * len(points[b]), points[b], s=12, alpha=0.5, color=colours[group], edgecolor="none")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images per batch")
    ax.set_ylabel(f"test {metric} (best-by-val checkpoint)")
    ax.set_title("test metric against batch size; bars: 95% CI over seeds", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(out / "by_batch_size.png", fig)
    plt.close(fig)


def compare(paths: list[str], out: str | None = None, metric: str | None = None, by: list[str] | None = None,
            smooth: float = 0.6, margin: float | None = None) -> Path:
    """Write curves.png, by_batch_size.png, summary.md and summary.csv for the runs under ``paths``.

    Args:
        by: the keys that define an arm (default: every override that differs between runs),
            e.g. ``["norm"]`` when each norm was run with options of its own.
        smooth: exponential-moving-average weight of the per-step training loss (TensorBoard's
            default 0.6; 0 draws the raw curve only).
        margin: the equivalence margin, when not the one the runs declared (``study.margin``).
    """
    if not 0 <= smooth < 1:
        raise SegbenchError(f"--smooth={smooth} must be at least 0 and below 1 (TensorBoard's default is 0.6)")
    if margin is not None and not (np.isfinite(margin) and margin > 0):
        raise SegbenchError(f"--margin={margin} must be a positive number in the metric's units, e.g. 0.02")
    runs = find_runs(paths)
    metric = metric or runs[0].metrics.get("report_metric", "dice")
    main_metric = runs[0].metrics.get("main_metric", metric)
    varying = list(by) if by else varying_keys(runs)
    arms: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        arms[arm_key(run, varying)].append(run)
    out_dir = Path(out) if out else (Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / "metrics.json").exists()
                                     else Path("compare"))
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(arms, metric, main_metric, out_dir, smooth)
    try:
        prediction_grid(arms, {key: _label(key) for key in arms}, out_dir, _sort_key)
        pictures = "![predictions](predictions.png)\n\n"
    except (SegbenchError, OSError) as err:  # data or checkpoints moved away: the numbers still compare
        (out_dir / "predictions.png").unlink(missing_ok=True)
        pictures = f"(no prediction grid: {one_line(err)})\n\n"
    rows = summarize(arms, metric)
    design, design_note = verdicts.describe_design(runs, margin)
    planned = read_design(paths)
    if planned:  # a sequential study: judged at alpha / looks, as its rounds were
        design = Design(design.margin, float(planned["alpha"]), int(planned["looks"]), design.power)
        design_note += (f"; sequential study: {planned['looks']} looks planned ({planned['first']} seeds, then "
                        f"{planned['per_round']} per round up to {planned['max_seeds']}), each at alpha/{planned['looks']}")
    pairs = verdicts.paired_comparisons(arms, metric, result, _label, _sort_key, design)
    scopes = {(r.config.get("study") or {}).get("scope", "subjects") for r in runs}
    scope = "population" if "population" in scopes else "subjects"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "summary.csv", buffer.getvalue())
    if pairs:
        buffer = io.StringIO()
        fields = ["a", "b", "differs_in", "same", "n", "budget", "converged", "diff", "low", "high", "median",
                  "hodges_lehmann", "hl_low", "hl_high", "p", "p_holm", "p_tost", "p_tost_holm", "margin",
                  "equivalence_margin_supported", "p_sign_flip", "p_wilcoxon", "detectable", "seeds_to_detect_margin",
                  "seeds_for_equivalence", "verdict"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(pairs)
        write_text(out_dir / "paired.csv", buffer.getvalue())
    seeds = sorted({r.metrics.get("seed") for r in runs})
    header = (f"# segbench comparison\n\n{len(runs)} runs in {len(arms)} arms, varying: {', '.join(varying)}; "
              f"seeds: {', '.join(map(str, seeds))}.\n\n"
              f"Result: test-split `{metric}` of the checkpoint chosen on val by `{main_metric}`"
              f"{' (sigmoid threshold also chosen on val)' if metric == 'dice' else ''}; "
              "cells are mean [95% t-interval over seeds]. `val_selection` is the val number used to choose and is "
              "not a result. `train_eval_loss`: training images in eval mode, measured alike for every arm.\n\n"
              "![curves](curves.png)\n\n" + pictures)
    verdict_lines = [f"{p['a']} vs {p['b']}: {_verdict(p, scope)} (a - b {_f(p['diff'])} {_ci(p['low'], p['high'])}, "
                     f"n={p['n']}, Holm p={_f(p['p_holm'], '.3f')})" for p in pairs]
    write_text(out_dir / "verdicts.txt", "".join(line + "\n" for line in verdict_lines))
    # The verdicts in sentences first: what a reader opened the report for, before any table.
    opening = ("## Verdicts\n\n" + "".join(f"- {line}\n" for line in verdict_lines) + "\n") if verdict_lines else ""
    header = header.replace("\n\n![curves]", "\n\n" + opening + "![curves]", 1)
    write_text(out_dir / "summary.md", header + markdown(rows, pairs, metric, design_note, scope) + "\n\n"
               + "\n".join(f"- {r.path}" for r in runs) + "\n")
    return out_dir
