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

    On the CPU inductor lays conv activations out channels-last, and this torch build's float32
    channels-last conv backward segfaults (measured on tiny ResUNets; the reason float32
    ``channels_last`` is refused), so float32 keeps NCHW there. bf16's channels-last backward is
    sound and keeps inductor's choice.
    """
    float32_on_cpu = device.type == "cpu" and (precision or FP32).dtype is None
    return torch.compile(model, options={"layout_optimization": False} if float32_on_cpu else None)


FP32 = Precision()  # no autocast, no scaler
