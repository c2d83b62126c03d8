"""Checkpoints: plain tensors, numbers and strings, so ``torch.load(weights_only=True)`` opens them.

Reading one is where user mistakes meet torch's long messages (a truncated file, a checkpoint
that holds code, another model's weights), so each is turned into one line here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from segbench.errors import SegbenchError
from segbench.io import load_torch, save_torch
from segbench.schema import flatten

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "best", "config")


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    step: int,
    best: dict,
    config: dict,
    last_val: dict | None = None,
    scaler=None,
    val_history: list | None = None,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best": best,
        "last_val": dict(last_val or {}),  # the latest validation, whose threshold the test uses
        # Every validation so far: a resumed run's convergence check (and trainer.until_plateau) must
        # judge the whole curve, not the part after the resume.
        "val_history": list(val_history or []),
        "torch_rng": torch.get_rng_state(),  # dropout; data order and augmentation derive from (seed, step)
        "config": config,
    }
    if scaler is not None:  # fp16: the loss scale it has settled on, so a resume continues with it
        state["scaler"] = scaler.state_dict()
    save_torch(path, state)


def resume_hint(run_dir) -> str:
    """The override that resumes ``run_dir``, ready to paste into a shell."""
    return shlex.quote(f"trainer.resume={run_dir}")


def resume_path(resume, run_dir: Path) -> Path | None:
    """``trainer.resume``: false, true (this run dir), or a run dir / checkpoint path."""
    if resume in (False, None, "false", "False"):
        return None
    path = run_dir if resume in (True, "true", "True") else Path(str(resume))
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise SegbenchError(
            f"trainer.resume={resume!r}: no checkpoint at {path}; pass a run directory that holds checkpoints/last.pt"
        )
    return path


def load_checkpoint(path: Path, required: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint's contents, or one line saying why it cannot be used."""
    state = load_torch(path)
    if not isinstance(state, dict) or any(key not in state for key in required):
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        raise SegbenchError(f"{path} is not a segbench checkpoint (it has no {', '.join(missing)})")
    return state


def load_model_state(model, state: dict, path: Path) -> None:
    """``model.load_state_dict`` with a one-line account of a mismatch instead of torch's key dump."""
    own, theirs = model.state_dict(), state["model"]
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    reshaped = [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    if missing or unexpected or reshaped:
        config = state.get("config") or {}
        built = ", ".join(f"{g}={(config.get(g) or {}).get('name')}" for g in ("model", "norm") if config.get(g))
        parts = [
            f"{len(v)} {what}"
            for v, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
            if v
        ]
        example = (missing or unexpected or reshaped)[0]
        raise SegbenchError(
            f"{path} does not fit this model: weights {', '.join(parts)} (e.g. {example!r})"
            + (f"; it was trained with {built}" if built else "")
        )
    model.load_state_dict(theirs)


# Settings a resumed run may change: how long and how it trains on, never what it trains.
RESUMABLE = ("trainer.", "data.num_workers", "data.val_batch_size")


def changed_settings(saved: dict, now: dict) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and this run's, outside ``RESUMABLE``."""
    flat_saved, flat_now = flatten(saved), flatten(now)
    keys = sorted(set(flat_saved) | set(flat_now))
    # An option added after the checkpoint was written, left at its null or false (off) default, changes
    # nothing: runs trained before data.spacing, data.test_sites or data.site_batches existed still resume.
    added_off = {k for k in flat_now if k not in flat_saved and (flat_now[k] is None or flat_now[k] is False)}
    return [
        k
        for k in keys
        if flat_saved.get(k, "<unset>") != flat_now.get(k, "<unset>")
        and not k.startswith(RESUMABLE)
        and k not in added_off
    ]
