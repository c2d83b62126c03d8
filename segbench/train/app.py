"""``segbench train``: the Hydra application around ``train(cfg, run_dir)``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segbench.errors import SegbenchError


@hydra.main(config_path="pkg://segbench.configs", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Train one run; the return value (best validation metric, never test) is what Hydra sweepers optimise."""
    from segbench.train.lr_grid import train_with_lr_grid
    from segbench.train.trainer import TrainingDiverged

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    _share_cores(cfg, hydra_cfg)
    try:
        metrics = train_with_lr_grid(cfg, run_dir)
    except SegbenchError as err:
        print(f"segbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"segbench: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        from segbench.train.distributed import teardown

        teardown()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"run directory: {run_dir}")
    # What a sweeper optimises is the val metric: choosing on test would make test a val set.
    return float(metrics["val"]["best"].get(metrics["main_metric"], float("nan")))


def _share_cores(cfg: DictConfig, hydra_cfg) -> None:
    """Under the joblib launcher, give each of the n_jobs parallel runs its share of the cores."""
    n_jobs = hydra_cfg.launcher.get("n_jobs") if "launcher" in hydra_cfg else None
    if cfg.trainer.get("threads") is None and n_jobs and n_jobs > 0:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(n_jobs)))
