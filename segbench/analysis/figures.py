"""The figures of ``segbench compare``: learning curves with bands over seeds, and the test metric
against batch size with every seed drawn."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.arms import colour_group, label, result, sort_key
from segbench.analysis.runs import Run
from segbench.io import save_figure

LINESTYLES = ["-", "--", ":", "-."]
# Okabe & Ito's colour-blind-safe palette (black last: it is also the text colour).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


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


def _draw_arm(
    ax, key, runs: list[Run], panel: tuple, smooth: float, by_images: bool, style: dict, marked: bool
) -> bool:
    """One arm's mean curve with its band (and, on val panels, where each seed's best checkpoint was
    taken); returns whether the checkpoint marks have their legend entry now."""
    tag, smoothed, _, log, _, (low, high) = panel
    band = _band(runs, tag, smooth if smoothed else 0.0)
    if band is None:
        return marked
    x, mean, lo, hi = band
    first = runs[0].metrics
    scale = float(first.get("global_batch_size") or 1) if by_images else 1.0  # steps -> images seen
    x = x * scale
    if smoothed and smooth:
        raw = _band(runs, tag)
        # Faint, and kept out of the axis limits: one raw dip must not squash the smoothed curves.
        ax.plot(raw[0] * scale, raw[1], alpha=0.25, linewidth=0.6, scalex=False, scaley=False, **style)
    ax.plot(x, mean, label=f"{label(key)} (n={len(runs)})", marker=None if smoothed else "o", markersize=3, **style)
    if np.isfinite(lo).any():
        floor = np.nanmin(mean[mean > 0]) / 10 if log and (mean > 0).any() else low
        # A t-band can leave the metric's range at few seeds; drawn clipped to it.
        ax.fill_between(x, np.clip(lo, floor, high), np.clip(hi, floor, high), alpha=0.18, color=style["color"])
    if not smoothed and tag.startswith("val/") and tag != "val/loss":
        chosen = [(r.metrics.get("val", {}).get("best") or {}).get("step") for r in runs]
        at = dict(zip(x / scale, mean))
        marks = [(c * scale, at[c]) for c in chosen if c in at]
        if marks:
            ax.scatter(
                *zip(*marks), marker="v", s=40, color=style["color"], edgecolor="black", zorder=3,
                label=None if marked else "best-by-val checkpoint (per seed)",
            )  # fmt: skip
            return True
    return marked


def plot_curves(arms: dict[tuple, list[Run]], metric: str, main_metric: str, out: Path, smooth: float = 0.6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_runs = [r for runs in arms.values() for r in runs]
    groups = sorted({colour_group(k) for k in arms}, key=sort_key)
    batches = sorted({r.metrics.get("global_batch_size") for r in all_runs})
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    styles = {b: LINESTYLES[i % len(LINESTYLES)] for i, b in enumerate(batches)}
    # (tag, smoothed, title, log scale, y label, range of the metric)
    panels = [
        (
            "train/loss",
            True,
            f"train loss (per step, batch statistics; EMA {smooth:g} over the raw mean, faint)",
            True,
            "loss (log)",
            (0, np.inf),
        ),
        (
            "train/loss_eval_mode",
            False,
            "train loss in eval mode (fixed training images)",
            True,
            "loss (log)",
            (0, np.inf),
        ),
        ("val/loss", False, "val loss", True, "loss (log)", (0, np.inf)),
        (
            f"val/{main_metric}",
            False,
            f"val {main_metric} (selection metric; triangles: where each seed's best-by-val checkpoint was taken)",
            False,
            main_metric,
            (0, 1),
        ),
    ]
    by_images = len(batches) > 1  # steps of different batch sizes are not comparable; images seen are
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)))
    marked = False  # the checkpoint marks' legend entry, once
    for ax, panel in zip(axes, panels):
        _, _, title, log, ylabel, _ = panel
        for key in sorted(arms, key=sort_key):
            style = dict(
                color=colours[colour_group(key)], linestyle=styles[arms[key][0].metrics.get("global_batch_size")]
            )
            marked = _draw_arm(ax, key, arms[key], panel, smooth, by_images, style, marked)
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

    _plot_by_batch_size(arms, metric, groups, colours, batches, out)


def _plot_by_batch_size(arms, metric: str, groups: list, colours: dict, batches: list, out: Path) -> None:
    """by_batch_size.png: each arm's test metric against its batch size, every seed drawn."""
    import matplotlib.pyplot as plt

    if len(batches) < 2:
        (out / "by_batch_size.png").unlink(missing_ok=True)  # one batch size: nothing to draw
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, group in enumerate(groups):
        points = defaultdict(list)
        for key, runs in arms.items():
            if colour_group(key) == group:
                for r in runs:
                    points[r.metrics.get("global_batch_size")].append(result(r, metric))
        xs = sorted(points)
        ci = np.array([stats.mean_ci(points[b]) for b in xs])
        yerr = np.nan_to_num(np.abs(ci[:, 1:] - ci[:, :1]).T)
        # Arms side by side at each batch size (a few per cent apart on the log axis), so bars do not overlap.
        shift = 2 ** ((i - (len(groups) - 1) / 2) * 0.06)
        ax.errorbar(
            [b * shift for b in xs],
            ci[:, 0],
            yerr=yerr,
            marker="o",
            capsize=3,
            label=label(group),
            color=colours[group],
        )
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
