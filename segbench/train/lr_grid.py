"""``study.lr_grid``: give every arm its own best learning rate, chosen on val.

BN and no-BN nets do not share an optimal learning rate, so comparing both at one lr can
measure the lr rather than the norm (Dodge et al. 2019: report the tuning budget). With a grid,
one run trains once per lr into ``<run>/lr_<value>/`` and keeps the lr whose best val selection
metric is highest; its test results become the run's results. Test is never looked at to choose.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.io import write_json
from segbench.schema import lr_grid
from segbench.train.trainer import train


def train_with_lr_grid(cfg: DictConfig, run_dir: str | Path) -> dict:
    """``train`` once per lr of the grid (or once, without a grid); returns the chosen run's metrics."""
    grid = lr_grid(cfg)
    if not grid:
        return train(cfg, run_dir)
    run_dir = Path(run_dir)
    results = {}
    for lr in grid:
        sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        sub.optim.lr = lr
        results[lr] = train(sub, run_dir / f"lr_{lr:g}")
    main = next(iter(results.values()))["main_metric"]
    scores = {lr: float(m["val"]["best"].get(main, -math.inf)) for lr, m in results.items()}
    chosen = max(grid, key=lambda lr: (scores[lr], -lr))  # ties: the smaller lr
    for lr, metrics in results.items():
        write_json(run_dir / f"lr_{lr:g}" / "metrics.json", {**metrics, "grid_member": True})
    metrics = {**results[chosen], "lr_grid": {f"{lr:g}": scores[lr] for lr in grid}, "selected": f"lr_{chosen:g}"}
    write_json(run_dir / "metrics.json", metrics)
    return metrics
