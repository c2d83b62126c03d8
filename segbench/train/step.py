"""One optimisation step, shared by the trainer, preflight's dry run and ``segbench bench``."""

from __future__ import annotations

import torch

from segbench.train.precision import Precision


def train_step(model, images, target, loss_fn, optimizer, precision: Precision | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss. ``segbench bench`` times exactly this."""
    precision = precision or FP32
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        loss = loss_fn(model(images), target)
    if not torch.isfinite(loss):
        return loss.detach()  # the caller stops before any update reaches the weights
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def compile_for_training(model, device: torch.device, precision: Precision | None = None):
    """``torch.compile(model)`` for training steps (``trainer.compile``).

    Inductor lays conv activations out channels-last, which calls the very channels-last backward
    that crashes in float32 on the CPU (``Precision.nhwc_backward_crashes``; it segfaulted on tiny
    ResUNets), so there the compiled step keeps NCHW; elsewhere inductor's choice stands.
    """
    precision = precision or Precision(device.type)
    options = {"layout_optimization": False} if precision.nhwc_backward_crashes else None
    return torch.compile(model, options=options)


FP32 = Precision()  # no autocast, no scaler
