"""``segbench train``: the Hydra application around ``train(cfg, run_dir)``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segbench.errors import SegbenchError


@hydra.main(config_path="pkg://segbench.configs", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Train one run; the return value (best validation metric) is what Hydra sweepers optimise."""
    from segbench.train.trainer import TrainingDiverged, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except SegbenchError as err:
        print(f"segbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"segbench: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        from segbench.train.distributed import teardown

        teardown()
    print(f"run directory: {run_dir}")
    return float(metrics["best"].get(metrics["main_metric"], float("nan")))
