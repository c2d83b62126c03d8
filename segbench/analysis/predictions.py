"""``predictions.png``: the same test slices as each arm predicts them, because people would rather look.

Rows are test slices (those with the most foreground, so there is something to see), columns the
image, the truth and one prediction per arm: the arm's lowest seed, its best-by-val checkpoint,
at the sigmoid threshold that checkpoint's validation chose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from segbench.analysis.runs import Run
from segbench.io import save_figure


def _checkpoint(run: Run) -> tuple[Path, dict]:
    from segbench.train.checkpoint import load_checkpoint

    path = run.path / str(run.metrics.get("selected") or "") / "checkpoints" / "best.pt"
    return path, load_checkpoint(path, ("model", "config"))


def _model_of(run: Run, splits):
    from segbench.train.checkpoint import load_model_state
    from segbench.train.prepare import model_from_config

    path, state = _checkpoint(run)
    cfg = OmegaConf.create(state["config"])
    train = splits.train
    model = model_from_config(
        cfg, train.in_channels, train.num_outputs, list(getattr(train, "modalities", []) or []), init=False
    )
    load_model_state(model, state, path)
    return model.eval(), float(state.get("best", {}).get("threshold_tuned", 0.5))


def _mask(logits: torch.Tensor, kind: str, threshold: float) -> np.ndarray:
    if kind == "multilabel":
        return (torch.sigmoid(logits[0]) > threshold).numpy()
    return (logits.argmax(0) > 0).numpy()


def prediction_grid(arms: dict[tuple, list[Run]], labels: dict[tuple, str], out: Path, sort_key, rows: int = 4) -> Path:
    """Write ``out / "predictions.png"``; raises ``SegbenchError`` when the runs' data or checkpoints are gone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segbench.data import build_datasets
    from segbench.eval.evaluate import base_dataset
    from segbench.eval.inference import predict

    first = min(next(iter(arms.values())), key=lambda r: r.metrics.get("seed", 0))
    data = _checkpoint(first)[1]["config"]["data"]  # resolved when the run trained: its data root as it was
    splits = build_datasets(dict(data), 1)
    test = splits.test or splits.val
    kind = splits.train.target_kind
    foreground = [
        float((test[i][1] > 0).float().mean())
        if kind == "multilabel"
        else float(((test[i][1] > 0) & (test[i][1] != 255)).float().mean())
        for i in range(len(test))
    ]
    # One slice per case (its fullest), from the cases with the most foreground: different subjects.
    cases = getattr(base_dataset(test), "cases", None) or list(range(len(test)))
    fullest: dict = {}
    for index, share in enumerate(foreground):
        if share >= foreground[fullest.get(cases[index], index)]:
            fullest[cases[index]] = index
    picks = sorted(fullest.values(), key=lambda i: -foreground[i])[:rows]
    models = {
        key: _model_of(min(arms[key], key=lambda r: r.metrics.get("seed", 0)), splits)
        for key in sorted(arms, key=sort_key)
    }
    columns = 2 + len(models)
    fig, axes = plt.subplots(len(picks), columns, figsize=(2.2 * columns, 2.2 * len(picks)), squeeze=False)
    with torch.no_grad():
        for row, index in zip(axes, picks):
            image, target = test[index]
            # A whole volume (3-D data) is predicted by sliding windows and shown at its fullest axial slice.
            z = int(target[0].flatten(1).sum(1).argmax()) if image.dim() == 4 else None
            pick = (lambda t: t[:, z]) if z is not None else (lambda t: t)  # noqa: B023 - called in this iteration
            target2d, image2d = pick(target), pick(image)
            truth = (
                (target2d[0] > 0.5).numpy() if kind == "multilabel" else ((target2d > 0) & (target2d != 255)).numpy()
            )
            row[0].imshow(image2d[-1].numpy(), cmap="gray")
            row[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
            for ax, (model, threshold) in zip(row[2:], models.values()):
                pred = _mask(pick(predict(model, image[None], base_dataset(test))[0]), kind, threshold)
                overlap = np.stack([pred & ~truth, truth & pred, truth & ~pred], axis=-1).astype(float)
                ax.imshow(overlap)
            for ax in row:
                ax.set_xticks([]), ax.set_yticks([])
    for ax, title in zip(axes[0], ["image (last channel)", "truth", *(labels[k] for k in models)]):
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        "test slices; prediction colours: green both, red prediction only, blue truth only "
        "(lowest seed, best-by-val checkpoint, val-chosen threshold)",
        fontsize=7,
    )
    fig.tight_layout()
    path = save_figure(out / "predictions.png", fig)
    plt.close(fig)
    return path
