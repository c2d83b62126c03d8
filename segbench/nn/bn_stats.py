"""Batch-norm statistics tools: precise BN and frozen BN for the trainer, batch vs running statistics
for ``diagnose``."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BN-like layer that keeps running statistics (batch, syncbatch, batch renorm, SPADE's inner)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], device) -> int:
    """Precise BN (Wu & Johnson 2021): exact average of batch statistics over the given batches.

    Weights are untouched. With ``momentum=None`` torch keeps a cumulative average, so after K
    batches the running statistics are the mean of K batch statistics, not an EMA dominated by
    the last few. Returns the number of batches used (0 when the model has no BN).
    """
    layers = [m for _, m in bn_layers(model)]
    if not layers:
        return 0
    saved = [(m.momentum, m.training, getattr(m, "update_stats", None)) for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
        if hasattr(m, "update_stats"):  # a never-updating BN (TF1's missing UPDATE_OPS) is recomputed too
            m.update_stats = True
    count = 0
    for images in batches:
        model(images.to(device))
        count += 1
    for m, (momentum, training, update_stats) in zip(layers, saved):
        m.momentum = momentum
        m.train(training)
        if update_stats is not None:
            m.update_stats = update_stats
    model.train(was_training)
    return count


def train_mode(model: nn.Module, freeze_bn: bool = False) -> nn.Module:
    """``model.train()``; with ``freeze_bn`` BN layers stay in eval mode.

    Frozen BN normalizes with its running statistics and stops updating them, so the last part
    of training adapts the weights to the statistics that evaluation will use.
    """
    model.train()
    if freeze_bn:
        for _, m in bn_layers(model):
            m.eval()
    return model


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Inside the block BN layers normalize with each batch's own statistics and update nothing."""
    layers = [m for _, m in bn_layers(model)]
    saved = [(m.training, m.momentum) for m in layers]
    snapshots = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    try:
        for m in layers:
            m.train()
        yield model
    finally:
        for m, (training, momentum), (mean, var, count) in zip(layers, saved, snapshots):
            m.train(training)
            m.momentum = momentum
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def running_statistics(model: nn.Module):
    """Inside the block every BN layer in eval mode uses its running statistics, whatever its ``eval_stats``."""
    layers = [m for _, m in bn_layers(model) if getattr(m, "eval_stats", "running") != "running"]
    try:
        for m in layers:
            m.eval_stats = "running"
        yield model
    finally:
        for m in layers:
            m.eval_stats = "batch"
