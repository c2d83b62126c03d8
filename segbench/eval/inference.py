"""Prediction over whole inputs: a plain forward for slices, sliding windows for whole volumes.

A 3-D net trains on patches and is evaluated on whole subjects, which are too large (and of the
wrong size) for one forward: overlapping windows are predicted and blended with a Gaussian
weight that trusts each window's centre more than its border, where the receptive field is cut
off (nnU-Net's and MONAI's recipe). Window placement, padding and the weight map follow MONAI's
``sliding_window_inference`` conventions, so both give the same result (checked in the tests).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.nn import functional as F


def gaussian_weight(window: tuple[int, ...], sigma_scale: float = 0.125, device=None) -> torch.Tensor:
    """The blending weight of one window: per axis a Gaussian centred on the window's middle with
    sigma ``sigma_scale`` x its side, multiplied over the axes, floored at 1e-3 so no voxel is 0/0."""
    weight = None
    for side in window:
        offsets = torch.arange(side, dtype=torch.float32) - (side - 1) / 2.0
        axis = torch.exp(offsets**2 / (-2 * (side * sigma_scale) ** 2))
        weight = axis if weight is None else weight[..., None] * axis
    return weight.clamp(min=max(float(weight.min()), 1e-3)).to(device)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: steps of ``window * (1 - overlap)``, the last flush with the end."""
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next((k for k in range(math.ceil(size / step)) if k * step + window >= size), 0) + 1
    return [k * step - max(k * step + window - size, 0) for k in range(count)]


@torch.no_grad()
def sliding_window(
    predict,
    inputs: torch.Tensor,
    window: tuple[int, ...],
    overlap: float = 0.5,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
) -> torch.Tensor:
    """``predict`` over ``inputs`` (N, C, *spatial) in overlapping ``window``s, Gaussian-blended.

    An input smaller than the window is zero-padded around it (and the output cropped back).
    Returns (N, K, *spatial) in float32.
    """
    spatial = tuple(inputs.shape[2:])
    pad = [max(w - s, 0) for w, s in zip(window, spatial)]
    if any(pad):
        flat = [p for extra in reversed(pad) for p in (extra // 2, extra - extra // 2)]
        inputs = F.pad(inputs, flat)
    padded = tuple(inputs.shape[2:])
    starts = list(itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded, window))))
    weight = gaussian_weight(window, sigma_scale, inputs.device)
    out = count = None
    for n in range(inputs.shape[0]):
        for first in range(0, len(starts), batch_size):
            chunk = starts[first : first + batch_size]
            boxes = [tuple(slice(a, a + w) for a, w in zip(start, window)) for start in chunk]
            logits = predict(torch.stack([inputs[n][(slice(None), *box)] for box in boxes])).float()
            if out is None:
                out = torch.zeros((inputs.shape[0], logits.shape[1], *padded), device=inputs.device)
                count = torch.zeros(padded, device=inputs.device)
            for box, piece in zip(boxes, logits):
                out[(n, slice(None), *box)] += piece * weight
                if n == 0:
                    count[box] += weight
    out = out / count
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
    return out[(slice(None), slice(None), *crop)]


def predict(model, images: torch.Tensor, dataset) -> torch.Tensor:
    """The model's logits for a batch of ``dataset`` items: whole volumes (a dataset with a
    ``window``) by sliding windows, anything else by one forward."""
    window = getattr(dataset, "window", None)
    if window is None or tuple(images.shape[2:]) == tuple(window):
        return model(images)
    return sliding_window(
        model, images, tuple(window), float(getattr(dataset, "overlap", 0.5)), int(getattr(dataset, "window_batch", 1))
    )
