"""``segbench compare``: group runs by what differs between them, average seeds, plot and tabulate."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis.runs import Run, find_runs
from segbench.io import save_figure, write_text

IGNORED_KEYS = {"seed", "trainer.device", "trainer.progress", "hydra.launcher.n_jobs"}
LINESTYLES = ["-", "--", ":", "-."]


def group_key(run: Run, varying: list[str]) -> tuple:
    return tuple((k, run.overrides.get(k, _config_value(run, k))) for k in varying)


def _config_value(run: Run, dotted: str) -> str:
    node = run.config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node) if node is not None else "-"


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (seeds excluded: they are averaged)."""
    keys = sorted({k for r in runs for k in r.overrides} - IGNORED_KEYS)
    varying = [k for k in keys if len({r.overrides.get(k, _config_value(r, k)) for r in runs}) > 1]
    return varying or ["norm"]


def _label(key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in key)


def _mean_curve(runs: list[Run], tag: str, x_tag: str | None = None):
    """Mean and spread (min, max) over seeds, on the steps all seeds share."""
    series = [r.scalar(tag) for r in runs if len(r.scalar(tag)[0])]
    if not series:
        return None
    steps = sorted(set.intersection(*[set(s.tolist()) for s, _ in series]))
    values = np.array([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in series])
    x = np.array(steps, dtype=float)
    if x_tag:
        xs, xv = runs[0].scalar(x_tag)
        lookup = dict(zip(xs.tolist(), xv.tolist()))
        x = np.array([lookup.get(t, np.nan) for t in steps])
    return x, values.mean(0), values.min(0), values.max(0)


def _stat(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return (float(arr.mean()), float(arr.std())) if len(arr) else (float("nan"), float("nan"))


def summarize(groups: dict[tuple, list[Run]], metric: str) -> list[dict]:
    rows = []
    for key, runs in groups.items():
        final_loss = [float(np.mean(r.scalar("train/loss")[1][-10:])) if len(r.scalar("train/loss")[1]) else None for r in runs]
        row = {"group": _label(key), "norm": runs[0].metrics.get("norm"), "batch_size": runs[0].metrics.get("global_batch_size"),
               "seeds": len(runs)}
        for name, values in (("final_train_loss", final_loss),
                             (f"best_val_{metric}", [r.metrics.get("best", {}).get(metric) for r in runs]),
                             (f"final_val_{metric}", [r.metrics.get("final", {}).get(metric) for r in runs]),
                             ("images_per_s", [r.metrics.get("images_per_s") for r in runs])):
            row[name], row[f"{name}_std"] = _stat(values)
        diag = [r.metrics.get("diagnose") for r in runs if r.metrics.get("diagnose")]
        for name in ("running", "batch", "precise"):
            if diag:
                row[f"diag_{name}_{metric}"], _ = _stat([d.get(name) for d in diag])
        rows.append(row)
    return rows


def _plot(groups, metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({r.metrics.get("norm") for runs in groups.values() for r in runs})
    batches = sorted({r.metrics.get("global_batch_size") for runs in groups.values() for r in runs})
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(norms)}
    styles = {b: LINESTYLES[i % len(LINESTYLES)] for i, b in enumerate(batches)}
    fig, axes = plt.subplots(3, 1, figsize=(8, 11))
    panels = ((axes[0], "train/loss", None, "step", "train loss"),
              (axes[1], "train/loss", "train/images_seen", "images seen", "train loss"),
              (axes[2], f"val/{metric}", None, "step", f"val {metric}"))
    for ax, tag, x_tag, xlabel, ylabel in panels:
        for key, runs in groups.items():
            curve = _mean_curve(runs, tag, x_tag)
            if curve is None:
                continue
            x, mean, lo, hi = curve
            first = runs[0].metrics
            style = dict(color=colours[first.get("norm")], linestyle=styles[first.get("global_batch_size")])
            ax.plot(x, mean, label=_label(key), marker="o" if tag.startswith("val") else None, markersize=3, **style)
            if len(runs) > 1:
                ax.fill_between(x, lo, hi, alpha=0.2, color=style["color"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title("train loss (mean over seeds, band: min-max)")
    fig.tight_layout()
    save_figure(out / "curves.png", fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for norm in norms:
        points = defaultdict(list)
        for runs in groups.values():
            for r in runs:
                if r.metrics.get("norm") == norm:
                    points[r.metrics.get("global_batch_size")].append(r.metrics.get("final", {}).get(metric, np.nan))
        xs = sorted(points)
        means = [np.nanmean(points[b]) for b in xs]
        stds = [np.nanstd(points[b]) for b in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=norm, color=colours[norm])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images per batch")
    ax.set_ylabel(f"final val {metric}")
    ax.set_title("validation metric against batch size")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(out / "by_batch_size.png", fig)
    plt.close(fig)


def _markdown(rows: list[dict], metric: str) -> str:
    cols = ["group", "norm", "batch_size", "seeds", "final_train_loss", f"best_val_{metric}", f"final_val_{metric}", "images_per_s"]
    diag_cols = [c for c in rows[0] if c.startswith("diag_")] if rows else []
    lines = ["| " + " | ".join(cols + diag_cols) + " |", "|" + "---|" * len(cols + diag_cols)]
    for row in rows:
        cells = []
        for c in cols + diag_cols:
            value = row.get(c)
            if isinstance(value, float):
                std = row.get(f"{c}_std")
                cells.append(f"{value:.4f} ± {std:.4f}" if std is not None and row["seeds"] > 1 else f"{value:.4f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_hparams(run: Run, metric: str) -> None:
    """Add an HParams summary to the run's TensorBoard folder (TensorBoard's HParams tab)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    hp = {k: str(v) for k, v in run.overrides.items()}
    hp.update({"norm": str(run.metrics.get("norm")), "batch_size": int(run.metrics.get("global_batch_size") or 0)})
    values = {f"hparam/best_val_{metric}": float(run.metrics.get("best", {}).get(metric, float("nan")))}
    exp, ssi, sei = hparams(hp, values)
    writer = SummaryWriter(str(run.path / "tb"))
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    for tag, value in values.items():
        writer.add_scalar(tag, value, int(run.metrics.get("steps", 0)))
    writer.close()


def compare(paths: list[str], out: str | None = None, metric: str | None = None) -> Path:
    """Write curves.png, by_batch_size.png, summary.md and summary.csv for the runs under ``paths``."""
    runs = find_runs(paths)
    metric = metric or runs[0].metrics.get("main_metric", "dice")
    varying = varying_keys(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[group_key(run, varying)].append(run)
    out_dir = Path(out) if out else (Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / "metrics.json").exists()
                                     else Path("compare"))
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(groups, metric, out_dir)
    rows = summarize(groups, metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "summary.csv", buffer.getvalue())
    header = (f"# segbench comparison\n\n{len(runs)} runs in {len(groups)} groups, varying: {', '.join(varying)}; "
              f"metric: val/{metric}. Mean ± std over seeds.\n\n![curves](curves.png)\n\n")
    write_text(out_dir / "summary.md", header + _markdown(rows, metric) + "\n\n" + "\n".join(f"- {r.path}" for r in runs) + "\n")
    for run in runs:
        write_hparams(run, metric)
    return out_dir
