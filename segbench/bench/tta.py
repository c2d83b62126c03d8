"""Time to accuracy: wall seconds from ``train()`` being called until val Dice first reaches a target.

Images/s says how fast a net chews data, not how soon it is good; a net that spends fewer FLOPs
per image can still lose. Each candidate is trained by segbench's own loop on the same data,
split, budget and seed, validated every ``val_every`` steps; the first validation at or above
the target counts, and the run stops there (``trainer.stop_at``). Seconds include everything a
user waits for (opening the data, building the
model, validating); ``train_seconds`` leaves the validations out.
"""

from __future__ import annotations

import logging
import tempfile

from segbench.config import compose
from segbench.errors import SegbenchError

# model overrides of each candidate; monai_unet needs `pip install segbench[bench]`
CANDIDATES = {"resunet (segbench default)": [], "monai_unet": ["model=monai_unet"]}


def monai_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("monai") is not None


def time_to_accuracy(
    root: str, overrides: list[str], target: float, max_steps: int, val_every: int, device: str
) -> dict:
    from segbench.train.trainer import train

    cfg = compose(
        [
            f"data.root={root}",
            *overrides,
            f"trainer.max_steps={max_steps}",
            f"trainer.val_every={val_every}",
            f"trainer.checkpoint_every={max_steps}",
            "trainer.progress=false",
            f"trainer.device={device}",
            "trainer.log_images=0",
            "trainer.val_hd95=false",
            f"trainer.stop_at={target}",
        ]
    )
    quiet = logging.getLogger("segbench")
    level, quiet.level = quiet.level, logging.WARNING  # the bench's own lines say what is going on
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            metrics = train(cfg, run_dir)
    finally:
        quiet.setLevel(level)
    metric, history = metrics["main_metric"], metrics["val"]["history"]
    hit = next((h for h in history if h[metric] >= target), None)
    return {
        "metric": f"val {metric}",
        "target": target,
        "reached": hit is not None,
        "seconds": hit["seconds"] if hit else None,
        "train_seconds": hit["seconds"] - hit["eval_seconds"] if hit else None,
        "step": hit["step"] if hit else None,
        "best": max(h[metric] for h in history),
        "images_per_s": metrics["images_per_s"],
        "precision": metrics["precision"],
        "max_steps": max_steps,
        "val_every": val_every,
        "history": history,
    }


def line(name: str, result: dict) -> str:
    """One sentence per candidate, for the bench's human-readable summary."""
    if not result["reached"]:
        return (
            f"{name}: did not reach {result['metric']} {result['target']:g} in {result['max_steps']} steps "
            f"(best {result['best']:.3f})"
        )
    speed = f"{result['images_per_s']:.1f} images/s, " if result["images_per_s"] else ""  # None after one step
    return (
        f"{name}: {result['metric']} >= {result['target']:g} after {result['seconds']:.1f} s "
        f"({result['train_seconds']:.1f} s training, step {result['step']}, {speed}precision {result['precision']})"
    )


def compare_candidates(root: str, target: float, max_steps: int, val_every: int, device: str, say) -> dict:
    out = {}
    for name, overrides in CANDIDATES.items():
        if "model=monai_unet" in overrides and not monai_available():
            out[name] = {"skipped": "MONAI is not installed: pip install 'segbench[bench]'"}
            continue
        say(f"time to accuracy: {name}, up to {max_steps} steps, validating every {val_every}")
        try:
            out[name] = time_to_accuracy(root, overrides, target, max_steps, val_every, device)
        except SegbenchError as err:
            out[name] = {"skipped": str(err)}
    return out
