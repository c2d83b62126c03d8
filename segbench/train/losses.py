"""Losses: sigmoid cross-entropy (the first question's), Dice, both, and softmax cross-entropy."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.data.common import IGNORE_INDEX
from segbench.errors import SegbenchError, invalid_choice


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - mean over samples and channels of (2|P∩T| + s) / (|P| + |T| + s), P = sigmoid(logits)
    (only over ``valid`` pixels when given)."""
    prob = torch.sigmoid(logits)
    if valid is not None:
        prob, target = prob * valid, target * valid
    dims = (2, 3)
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + smooth) / (total + smooth)).mean()


def _has_void(target: torch.Tensor) -> bool:
    """Whether any target pixel is a palette mask's void border (one reduction, read into Python)."""
    return bool((target == IGNORE_INDEX).any())


class MultilabelLoss(nn.Module):
    """``bce``, ``dice`` or ``bce_dice`` on (N, K, H, W) logits against float masks; pixels whose
    target is ``IGNORE_INDEX`` (a palette mask's void border) are left out of both."""

    def __init__(self, kind: str = "bce", dice_weight: float = 1.0, pos_weight: float | None = None):
        super().__init__()
        self.kind, self.dice_weight = kind, dice_weight
        self.pos_weight = None if pos_weight is None else torch.tensor(float(pos_weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, has_void: bool | None = None) -> torch.Tensor:
        """``has_void``: whether any target pixel is ``IGNORE_INDEX``; None reads it from ``target``
        (one reduction), which a caller under ``vmap`` must do beforehand (see ``vmap_ready``)."""
        loss = logits.new_zeros(())
        valid = None
        if has_void is None:
            has_void = _has_void(target)
        if has_void:  # targets are 0/1 everywhere else
            valid = (target != IGNORE_INDEX).to(logits.dtype)
            target = target * valid
        if self.kind in ("bce", "bce_dice"):
            pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            if valid is None:
                loss = loss + F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)  # mean over pixels
            else:
                each = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
                loss = loss + (each * valid).sum() / valid.sum().clamp(min=1)
        if self.kind in ("dice", "bce_dice"):
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, valid=valid)
        return loss


class SoftmaxCrossEntropy(nn.Module):
    """Softmax cross-entropy over classes; ``reduction="sum"`` is the original FCN recipe's."""

    def __init__(
        self, class_weights: list[float] | None = None, reduction: str = "mean", ignore_index: int = IGNORE_INDEX
    ):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise invalid_choice("loss.reduction", reduction, ["mean", "sum"])
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction
        )


def vmap_ready(loss_fn: nn.Module, target: torch.Tensor):
    """``loss_fn`` with its data-dependent branches decided on ``target`` (every member's batch,
    stacked) before ``torch.func.vmap``, which cannot read a tensor's value into Python."""
    if isinstance(loss_fn, MultilabelLoss):
        has_void = _has_void(target)
        return lambda logits, member_target: loss_fn(logits, member_target, has_void=has_void)
    return loss_fn


LOSSES = {"bce": "multilabel", "dice": "multilabel", "bce_dice": "multilabel", "ce": "multiclass"}


def build_loss(name: str, target_kind: str, **options) -> nn.Module:
    """Build loss ``name`` and check that it fits the dataset's targets (``auto``: the one that fits)."""
    if name == "auto":
        if options:
            raise SegbenchError(f"loss=auto takes no options ({', '.join(options)}); choose the loss, e.g. loss=bce")
        name = "bce" if target_kind == "multilabel" else "ce"
    if name not in LOSSES:
        raise invalid_choice("loss", name, [*LOSSES, "auto"])
    if LOSSES[name] != target_kind:
        fitting = [k for k, v in LOSSES.items() if v == target_kind]
        raise SegbenchError(
            f"loss={name} needs {LOSSES[name]} targets but the data gives {target_kind} "
            f"ones; use one of: {', '.join(fitting)}"
        )
    try:
        if name == "ce":
            return SoftmaxCrossEntropy(**options)
        return MultilabelLoss(name, **options)
    except TypeError as err:
        raise SegbenchError(f"loss={name}: {err}") from None
