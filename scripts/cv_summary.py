"""Per-subject results of a k-fold cross-validation: every subject tested once, by the fold that held it out.

Reads each fold run's ``metrics.json`` (the test split's per-case Dice and HD95 of the best-by-val
checkpoint at its val-chosen threshold) and ``split.json``, checks that the folds' test subjects are
disjoint and cover every subject, and writes a markdown table: per fold, then pooled over subjects
(mean, median, worst, share below 0.7 Dice, each with its 95 % interval: bootstrap over subjects,
Wilson for the share), then per site.

    python scripts/cv_summary.py <sweep or kept record> --out docs/results/<study>/cv.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from segbench.analysis.external import POOR_DICE, summarize_subjects
from segbench.data.lgg import CASE_NAME


def fold_runs(folder: Path) -> list[Path]:
    runs = sorted(p.parent for p in folder.rglob("metrics.json"))
    if not runs:
        raise SystemExit(f"error: no runs (folders with metrics.json) under {folder}")
    return runs


def read_fold(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    config = (run / ".hydra" / "config.yaml").read_text() if (run / ".hydra" / "config.yaml").exists() else ""
    fold = re.search(r"^\s*fold: (\d+)", config, re.M)
    best = metrics["test"]["best"]
    return {
        "run": run.name,
        "fold": int(fold.group(1)) if fold else None,
        "best_step": best.get("step"),
        "steps": metrics["steps"],
        "threshold": metrics["val"]["best"].get("threshold_tuned"),
        "converged": metrics.get("convergence", {}).get("converged"),
        "minutes": metrics.get("seconds", {}).get("total", float("nan")) / 60,
        "cases": {c: (v["dice"][0], (v.get("hd95") or [float("nan")])[0]) for c, v in best["per_case"].items()},
        "unit": metrics.get("hd95_unit", "mm"),
    }


def _interval(summary: dict, key: str, pct: bool = False) -> str:
    lo, hi = summary[f"{key}_ci"]
    return f"[{lo:.0%}, {hi:.0%}]" if pct else f"[{lo:.3f}, {hi:.3f}]"


def table(folds: list[dict]) -> str:
    seen: dict[str, int] = {}
    for f in folds:
        for case in f["cases"]:
            if case in seen:
                raise SystemExit(f"error: subject {case} is in the test split of two folds; not a cross-validation")
            seen[case] = f["fold"]
    share = f"share_below_{POOR_DICE}"
    lines = [
        "| fold | run | test subjects | mean Dice | median | worst | best-by-val step / steps | converged | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(folds, key=lambda f: f["fold"] if f["fold"] is not None else -1):
        dice = np.array([d for d, _ in f["cases"].values()])
        lines.append(
            f"| {f['fold']} | {f['run']} | {len(dice)} | {dice.mean():.3f} | {np.median(dice):.3f} | "
            f"{dice.min():.3f} | "
            f"{f['best_step']} / {f['steps']} | {f['converged']} | {f['minutes']:.0f} |"
        )
    dice = np.array([d for f in folds for d, _ in f["cases"].values()])
    hd = np.array([h for f in folds for _, h in f["cases"].values()])
    s = summarize_subjects(dice)
    lines += [
        "",
        f"Pooled over the {s['subjects']} subjects (each tested once): per-subject 3-D Dice mean **{s['mean']:.3f}** "
        f"{_interval(s, 'mean')}, median {s['median']:.3f} {_interval(s, 'median')}, worst {s['worst']:.3f}, "
        f"below {POOR_DICE}: {s[share]:.0%} {_interval(s, share, True)}; HD95 mean {np.nanmean(hd):.1f}, median "
        f"{np.nanmedian(hd):.1f} ({folds[0]['unit']}). "
        "Intervals: 95 %, bootstrap over subjects (Wilson for the share).",
    ]
    sites = {}
    for f in folds:
        for case, (d, _) in f["cases"].items():
            match = CASE_NAME.match(case)  # the Kaggle LGG folder names; other data: no site column
            if match:
                sites.setdefault(match["site"].upper(), []).append(d)
    if sites:
        lines += ["", "| institution | subjects | mean Dice | median | worst |", "|---|---|---|---|---|"]
        for site, values in sorted(sites.items()):
            v = np.array(values)
            lines.append(f"| {site} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | {v.min():.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sweep of data.fold=0..k-1, or its kept record")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print)")
    args = parser.parse_args()
    text = table([read_fold(run) for run in fold_runs(Path(args.folder))])
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    print(text, end="")


if __name__ == "__main__":
    main()
