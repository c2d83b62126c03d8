"""Seeds per hour: where a study run's wall time goes, and seed-runs per hour packed vs one per process.

Both are measured on the shipped 2-D width-8 study configuration (``experiment=why_bn_failed``,
the BN arm) shortened to ``steps`` with a validation every ``val_every`` steps: the study's own
ratio of validations to steps (600 and 50) is kept, so the shares of training and evaluation are
the study's. Every figure is a whole ``segbench train`` command timed from outside, as a user
waits for it: start-up, Hydra, the preflight dry run, training, validations and the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segbench.errors import SegbenchError

STUDY = ["experiment=why_bn_failed", "cause=bn_pytorch", "trainer.progress=false"]
FIRST_SEED = 90_000  # seeds no report uses


def _timed(args: list[str], data: str) -> float:
    """Wall seconds of one ``segbench train`` command; its last error line if it fails."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", *args, f"data.root={Path(data).resolve()}"],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SegbenchError(f"segbench train {' '.join(args)} failed: {last}")
    return time.perf_counter() - start


def _budget(steps: int, val_every: int) -> list[str]:
    return [f"trainer.max_steps={steps}", f"trainer.val_every={val_every}", f"trainer.checkpoint_every={steps}"]


def breakdown(data: str, steps: int, val_every: int) -> dict:
    """One run's wall seconds by phase; ``startup`` is everything before ``train()`` was called."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import segbench.train.app, segbench.train.trainer"], check=True)
    imports = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        wall = _timed(
            [*STUDY, *_budget(steps, val_every), f"seed={FIRST_SEED}", "trainer.threads=1", f"hydra.run.dir={tmp}/run"],
            data,
        )
        seconds = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["seconds"]
    phases = {
        "startup (imports, Hydra, preflight dry run)": wall - seconds["total"],
        **{k: v for k, v in seconds.items() if k != "total"},
    }
    phases["other (logging, bookkeeping)"] = wall - sum(phases.values())
    return {
        "wall_seconds": wall,
        "imports_seconds": imports,
        "steps": steps,
        "val_every": val_every,
        "seconds": phases,
        "share": {k: v / wall for k, v in phases.items()},
    }


def _test_dice(sweep: Path) -> dict[int, float]:
    out = {}
    for metrics in sweep.glob("*/metrics.json"):
        m = json.loads(metrics.read_text())
        out[int(m["seed"])] = float(m["test"]["best"]["dice"])
    return out


def seeds_per_hour(
    data: str, seeds: int, steps: int, val_every: int, packs: list[int], jobs: int = 2, vmap_too: bool = True
) -> dict:
    """Seed-runs per hour: ``jobs`` processes of one seed each (today's way) against packs of K."""
    seed_list = ",".join(str(FIRST_SEED + 1 + i) for i in range(seeds))
    common = [*STUDY, *_budget(steps, val_every), f"seed={seed_list}"]
    ways = {
        f"one seed per process, {jobs} jobs": [
            "trainer.threads=1",
            "hydra/launcher=parallel",
            f"hydra.launcher.n_jobs={jobs}",
        ]
    }
    ways.update({f"packed K={k}": ["hydra/launcher=packed", f"hydra.launcher.pack={k}"] for k in packs})
    if vmap_too:  # the default on a CPU takes turns; the vmapped step beside it, at the largest K
        ways[f"packed K={max(packs)}, vmap"] = [
            "hydra/launcher=packed",
            f"hydra.launcher.pack={max(packs)}",
            "hydra.launcher.vectorize=true",
        ]
    out, dice = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, extra) in enumerate(ways.items()):
            sweep = Path(tmp) / f"way{n}"
            wall = _timed(["-m", *common, *extra, f"hydra.sweep.dir={sweep}"], data)
            dice[name] = _test_dice(sweep)
            out[name] = {"wall_seconds": wall, "seed_runs_per_hour": seeds / wall * 3600}
    base_name = next(iter(ways))
    base = out[base_name]["seed_runs_per_hour"]
    for name in ways:
        out[name]["relative"] = out[name]["seed_runs_per_hour"] / base
        if name != base_name:  # float32: packed members differ from separate runs in the last bits, grown by training
            out[name]["max_abs_test_dice_difference"] = max(
                abs(dice[name][s] - dice[base_name][s]) for s in dice[base_name]
            )
    return {"seeds": seeds, "steps": steps, "val_every": val_every, "ways": out}


def lines(breakdown_report: dict | None, seeds_report: dict | None) -> list[str]:
    out = []
    if breakdown_report:
        b = breakdown_report
        out.append(
            f"one study run ({b['steps']} steps, val every {b['val_every']}, 1 thread): "
            f"{b['wall_seconds']:.1f} s wall, imports alone {b['imports_seconds']:.1f} s; "
            + ", ".join(f"{k} {v:.1f} s ({b['share'][k]:.0%})" for k, v in b["seconds"].items())
        )
    if seeds_report:
        s = seeds_report
        out.append(
            f"seed-runs per hour, {s['seeds']} seeds of {s['steps']} steps: "
            + "; ".join(
                f"{name} {w['seed_runs_per_hour']:.0f}/h ({w['relative']:.2f}x"
                + (
                    f", test Dice within {w['max_abs_test_dice_difference']:.3f} of separate runs"
                    if "max_abs_test_dice_difference" in w
                    else ""
                )
                + ")"
                for name, w in s["ways"].items()
            )
        )
    return out
