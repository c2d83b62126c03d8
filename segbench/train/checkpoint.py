"""Checkpoints: plain tensors, numbers and strings, so ``torch.load(weights_only=True)`` opens them."""

from __future__ import annotations

from pathlib import Path

import torch

from segbench.errors import SegbenchError
from segbench.io import save_torch


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, best: dict, config: dict,
                    last_val: dict | None = None) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best": best,
        "last_val": dict(last_val or {}),  # the latest validation, whose threshold the test uses
        "torch_rng": torch.get_rng_state(),  # dropout; data order and augmentation derive from (seed, step)
        "config": config,
    }
    save_torch(path, state)


def resolve_resume(resume, run_dir: Path) -> Path | None:
    """``trainer.resume``: false, true (this run dir), or a run dir / checkpoint path."""
    if resume in (False, None, "false", "False"):
        return None
    path = run_dir if resume in (True, "true", "True") else Path(str(resume))
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise SegbenchError(f"trainer.resume={resume!r}: no checkpoint at {path}; pass a run directory "
                            "that holds checkpoints/last.pt, or set hydra.run.dir to the run to continue")
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
