"""Evaluation: loss and metrics over a whole split, per case, and overlays for TensorBoard."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from segbench.eval.inference import predict
from segbench.eval.metrics import build_metric
from segbench.progress import progress
from segbench.ranks import DistContext, all_reduce_sum


def base_dataset(dataset):
    """The dataset under any ``Subset`` wrappers (where ``target_kind``, ``cases`` ... live)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _sample_ids(dataset) -> list[int]:
    """Indices into the base dataset of each item of ``dataset``, in order."""
    if isinstance(dataset, Subset):
        inner = _sample_ids(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    return list(range(len(dataset)))


def _rank_share(dataset, ids: list[int], ctx: DistContext) -> list[int]:
    """Positions this rank evaluates: whole cases, every world_size-th one, so per-case metrics stay whole."""
    if ctx.world_size == 1:
        return list(range(len(ids)))
    cases = getattr(base_dataset(dataset), "cases", None) or [str(i) for i in range(len(base_dataset(dataset)))]
    order = list(dict.fromkeys(cases[i] for i in ids))
    owner = {case: k % ctx.world_size for k, case in enumerate(order)}
    return [p for p, i in enumerate(ids) if owner[cases[i]] == ctx.rank]


@torch.no_grad()
def evaluate(
    model,
    dataset,
    loss_fn,
    ctx: DistContext,
    batch_size: int = 16,
    num_workers: int = 0,
    threshold: float = 0.5,
    hd95: bool | str = True,
    tune: bool = True,
    channels_last: bool | None = None,
) -> tuple[dict, tuple | None]:
    """Loss and metrics of ``model`` over ``dataset`` (summed across ranks), and the batch with the
    most foreground (what validation overlays show: tumour, not the empty edge slices a split starts with).

    The caller chooses the mode: eval (running statistics) is what validation means here.
    ``threshold`` is where sigmoid masks are cut for Dice and HD95; ``hd95``: False, True or a
    convention of ``metrics.HD95_CONVENTIONS`` ("monai", the default, or "brats"). With ``tune`` the result also
    holds the threshold that maximises mean per-case Dice on this data (``threshold_tuned``): a
    choice, so pass ``tune=False`` for a split that results are reported on.
    ``channels_last`` (None: on the CPU, for images) feeds the model NHWC images: the CPU's conv
    kernels run about 1.3x faster on them (width-8 ResUNet, measured by ``segbench bench``), and
    only the logits' last bits change: per-case Dice and HD95 of a study run's val and test came
    out identical, AUROC within 1e-5 (a pixel on a histogram bin edge can move a bin); tested.
    The backward pass, which crashes in NHWC float32 on the
    CPU, is never run here.
    """
    base = base_dataset(dataset)
    metric = build_metric(base, threshold, hd95, tune)
    ids = _sample_ids(dataset)
    positions = _rank_share(dataset, ids, ctx)
    if getattr(base, "whole", False):
        batch_size = 1  # whole volumes: one subject at a time, predicted by sliding windows
    loader = DataLoader(Subset(dataset, positions), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of per-batch loss x batch, images
    first, seen, most = None, 0, -1.0
    if channels_last is None:
        channels_last = ctx.device.type == "cpu"
    for images, target in progress(loader, "evaluating", len(loader), "batch"):
        images, target = images.to(ctx.device), target.to(ctx.device)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = predict(model, images, base)
        loss_sum += torch.tensor([float(loss_fn(logits, target)) * len(images), len(images)], dtype=torch.float64)
        metric.update(logits, target, [ids[p] for p in positions[seen : seen + len(images)]])
        seen += len(images)
        foreground = float(((target > 0.5) & (target != 255)).sum())
        if foreground > most:
            first, most = (images.cpu(), target.cpu(), logits.cpu()), foreground
    loss_sum = all_reduce_sum(loss_sum, ctx)
    metric.load_state([all_reduce_sum(t, ctx) for t in metric.state()])
    results = {"loss": float(loss_sum[0] / max(loss_sum[1], 1)), **metric.compute()}
    return results, first


LEGEND = (("truth only", (0.1, 0.85, 0.1)), ("prediction only", (0.9, 0.1, 0.1)), ("both", (0.95, 0.85, 0.1)))


def overlay(
    images: torch.Tensor, target: torch.Tensor, logits: torch.Tensor, kind: str, limit: int, min_side: int = 256
) -> torch.Tensor:
    """(N, 3, H', W') pictures: first input channel in grey, truth-only green, prediction-only red, both
    yellow; upscaled (nearest) to at least ``min_side`` pixels and with a legend strip underneath."""
    if images.dim() == 4:  # slices: those with the most truth first
        area = ((target > 0.5) & (target != 255)).flatten(1).sum(1)
        order = torch.argsort(area, descending=True, stable=True)
        images, target, logits = images[order], target[order], logits[order]
    images, target, logits = images[:limit], target[:limit], logits[:limit]
    if images.dim() == 5:  # volumes (multilabel targets): the axial slice with most truth, else the middle one
        truth = target.flatten(3).sum(-1).sum(1)  # (N, D)
        z = torch.where(truth.amax(1) > 0, truth.argmax(1), images.shape[2] // 2)
        pick = torch.arange(len(images))
        images, target, logits = images[pick, :, z], target[pick, :, z], logits[pick, :, z]
    grey = images[:, :1].float()
    grey = (grey - grey.amin((2, 3), keepdim=True)) / (
        grey.amax((2, 3), keepdim=True) - grey.amin((2, 3), keepdim=True) + 1e-6
    )
    if kind == "multilabel":
        truth, pred = target[:, :1] > 0.5, torch.sigmoid(logits[:, :1]) > 0.5
    else:
        truth = ((target > 0) & (target != 255))[:, None]
        pred = (logits.argmax(1) > 0)[:, None]
    rgb = grey.repeat(1, 3, 1, 1) * 0.6
    for mask, (_, colour) in zip((truth & ~pred, pred & ~truth, truth & pred), LEGEND):
        rgb = torch.where(mask, 0.4 * rgb + 0.6 * torch.tensor(colour).view(1, 3, 1, 1), rgb)
    scale = max(1, -(-min_side // min(rgb.shape[-2:])))
    rgb = torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="nearest")
    return torch.cat([rgb, _legend(rgb.shape[-1]).expand(len(rgb), -1, -1, -1)], dim=2).clamp(0, 1)


def _legend(width: int, height: int = 18) -> torch.Tensor:
    """(1, 3, height, width) strip naming the overlay colours."""
    import numpy as np
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (0, 0, 0))
    draw, x = ImageDraw.Draw(strip), 4
    for name, colour in LEGEND:
        draw.rectangle([x, 4, x + 10, height - 4], fill=tuple(int(255 * c) for c in colour))
        draw.text((x + 14, 3), name, fill=(255, 255, 255))
        x += 22 + 6 * len(name)
    return torch.from_numpy(np.asarray(strip, np.float32) / 255).permute(2, 0, 1)[None]
