"""Copy finished runs' record -- what ``segbench compare`` reads, nothing more -- to commit beside a report.

A study folder lives on one machine; should it be lost before every run of a look has finished,
the runs kept this way still count (``compare`` reads them with the runs trained later), and no
finished run has to be trained again. Kept per run: ``metrics.json``, ``.hydra/config.yaml`` and
``overrides.yaml``, and the TensorBoard scalars (the curves ``compare`` judges convergence from)
with their steps and wall times, rewritten without the image summaries and checkpoints that make
up most of a run folder; and, where the run has them, what was derived from it and its log
(``adapt.json``, which the site table reads; ``diagnose.json``; ``app.log``).

    python scripts/keep_run_record.py <study>/round_1 --out docs/results/<name>/finished_runs [--thin 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def finished_runs(folders: list[Path]) -> list[Path]:
    runs = []
    for folder in folders:
        runs += (
            [folder] if (folder / "metrics.json").is_file() else sorted(p.parent for p in folder.rglob("metrics.json"))
        )
    return runs


def unfit(run: Path) -> str | None:
    """Why ``run`` cannot be kept (checked for every run before the first file is written)."""
    needed = [run / "tb", run / ".hydra" / "config.yaml", run / ".hydra" / "overrides.yaml"]
    missing = next((p for p in needed if not p.exists()), None)
    if missing is not None:
        return f"{run} has no {missing.relative_to(run)}"
    try:
        json.loads((run / "metrics.json").read_text())
    except (ValueError, OSError) as err:
        return f"{run}/metrics.json cannot be read ({type(err).__name__})"
    return None


KEEP_LAST = 10  # compare's final training loss is the mean of a curve's last 10 points


def thinned(events: list, every: int) -> list:
    """Every ``every``-th point of a per-step curve and its last ``KEEP_LAST`` points, for a smaller record."""
    if every <= 1 or len(events) <= KEEP_LAST:
        return events
    head = len(events) - KEEP_LAST
    return [e for i, e in enumerate(events[:head]) if i % every == 0] + events[head:]


# Small files written beside a run by later commands (segbench adapt, diagnose) and its log.
DERIVED = ("adapt.json", "diagnose.json", "app.log")


def keep(run: Path, out: Path, every: int = 1) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from segbench.analysis.runs import scalar_events

    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "metrics.json", out / "metrics.json")
    for name in ("config.yaml", "overrides.yaml"):
        shutil.copy2(run / ".hydra" / name, out / ".hydra" / name)
    for name in DERIVED:
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    events = scalar_events(run / "tb")
    per_step = max(KEEP_LAST + 1, int(json.loads((run / "metrics.json").read_text()).get("steps") or 0) // 2)
    shutil.rmtree(out / "tb", ignore_errors=True)
    with SummaryWriter(str(out / "tb")) as writer:
        for tag in events.Tags().get("scalars", []):
            points = events.Scalars(tag)
            # Only curves logged every step are thinned; per-validation ones (train/loss_eval_mode) stay whole.
            for event in thinned(points, every if len(points) >= per_step else 1):
                writer.add_scalar(tag, event.value, event.step, walltime=event.wall_time)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1 (1 keeps every point)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished runs, or sweep folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="where each run's record goes (one folder per run)")
    parser.add_argument(
        "--thin",
        type=_positive,
        default=1,
        metavar="N",
        help="keep every N-th point of curves logged every step (and their last 10); per-validation curves stay whole",
    )
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"keep_run_record: {missing[0]} is not a folder; pass finished runs or sweep folders", file=sys.stderr)
        return 2
    runs = finished_runs(args.folders)
    if not runs:
        print(
            f"keep_run_record: no finished runs (folders with metrics.json) under {' '.join(map(str, args.folders))}",
            file=sys.stderr,
        )
        return 2
    problem = next(filter(None, map(unfit, runs)), None)
    if problem:
        print(f"keep_run_record: {problem}; nothing was written", file=sys.stderr)
        return 2
    for run in runs:
        keep(run, args.out / run.name, args.thin)
        print(f"kept {run} -> {args.out / run.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
