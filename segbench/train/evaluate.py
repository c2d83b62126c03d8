"""Validation: loss and metrics over the whole validation split, and overlays for TensorBoard."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from segbench.train.distributed import DistContext, all_reduce_sum
from segbench.train.metrics import build_metric


def val_loader(dataset, batch_size: int, num_workers: int, ctx: DistContext) -> DataLoader:
    """Each rank takes every world_size-th sample: no padding, so reduced sums count each once."""
    if ctx.world_size > 1:
        dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)


@torch.no_grad()
def evaluate(model, loader, loss_fn, dataset, ctx: DistContext) -> tuple[dict[str, float], tuple]:
    """Metrics over the loader (summed across ranks), and the first batch for overlays.

    The caller chooses the mode: eval (running statistics) is what validation means here.
    """
    metric = build_metric(dataset.target_kind, dataset.class_names)
    loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of per-batch loss x batch, images
    first = None
    for images, target in loader:
        images, target = images.to(ctx.device), target.to(ctx.device)
        logits = model(images)
        loss_sum += torch.tensor([float(loss_fn(logits, target)) * len(images), len(images)], dtype=torch.float64)
        metric.update(logits, target)
        if first is None:
            first = (images.cpu(), target.cpu(), logits.cpu())
    loss_sum = all_reduce_sum(loss_sum, ctx)
    metric.sums = all_reduce_sum(metric.sums, ctx)
    results = {"loss": float(loss_sum[0] / max(loss_sum[1], 1)), **metric.compute()}
    return results, first


def overlay(images: torch.Tensor, target: torch.Tensor, logits: torch.Tensor, kind: str, limit: int) -> torch.Tensor:
    """(N, 3, H, W) pictures: first input channel in grey, truth in green, prediction in red."""
    images, target, logits = images[:limit], target[:limit], logits[:limit]
    grey = images[:, :1]
    grey = (grey - grey.amin((2, 3), keepdim=True)) / (grey.amax((2, 3), keepdim=True) - grey.amin((2, 3), keepdim=True) + 1e-6)
    if kind == "multilabel":
        truth, pred = target[:, :1] > 0.5, torch.sigmoid(logits[:, :1]) > 0.5
    else:
        truth = ((target > 0) & (target != 255))[:, None]
        pred = (logits.argmax(1) > 0)[:, None]
    rgb = grey.repeat(1, 3, 1, 1) * 0.7
    rgb[:, 1:2] += 0.3 * truth
    rgb[:, 0:1] += 0.3 * pred
    return rgb.clamp(0, 1)
