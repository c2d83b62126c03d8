"""Optimizer, learning-rate schedule, batch-size lr scaling and the training budget."""

from __future__ import annotations

import math

import torch

from segbench.errors import SegbenchError, invalid_choice

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "poly", "cosine")
LR_SCALING = ("none", "linear", "sqrt")


def scaled_lr(lr: float, batch_size: int, rule: str, reference: int) -> float:
    """lr x (batch / reference) for "linear" (Goyal et al. 2017), its square root for "sqrt"."""
    if rule not in LR_SCALING:
        raise invalid_choice("optim.lr_scaling", rule, LR_SCALING)
    ratio = batch_size / reference
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def build_optimizer(params, cfg: dict, global_batch: int) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise invalid_choice("optim", name, OPTIMIZERS)
    lr = scaled_lr(cfg["lr"], global_batch, cfg.get("lr_scaling", "none"), cfg.get("reference_batch_size", 8))
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), weight_decay=cfg.get("weight_decay", 0.0)
        )
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=cfg.get("momentum", 0.9),
        nesterov=cfg.get("nesterov", False),
        weight_decay=cfg.get("weight_decay", 0.0),
    )


def build_scheduler(optimizer, cfg: dict, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant, poly ((1 - t)^p, the FCN/DeepLab schedule) or cosine decay."""
    kind, warmup, power = cfg.get("scheduler", "constant"), cfg.get("warmup_steps", 0), cfg.get("poly_power", 0.9)
    if kind not in SCHEDULES:
        raise invalid_choice("optim.scheduler", kind, SCHEDULES)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "poly":
            return (1 - t) ** power
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_steps(trainer_cfg: dict, num_items: int, global_batch: int) -> int:
    """Steps to train: ``max_images`` (equal data for every batch size), else epochs, else steps."""
    if trainer_cfg.get("max_images"):
        steps = math.ceil(trainer_cfg["max_images"] / global_batch)
    elif trainer_cfg.get("max_epochs"):
        steps = trainer_cfg["max_epochs"] * max(1, num_items // global_batch)
    else:
        steps = trainer_cfg["max_steps"]
    if steps < 1:
        raise SegbenchError(
            f"the training budget comes to {steps} steps; raise trainer.max_steps, "
            "trainer.max_epochs or trainer.max_images"
        )
    return int(steps)
