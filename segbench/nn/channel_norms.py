"""Norms a 2026 reader expects by name: ConvNeXt's LayerNorm2d, RMSNorm over channels, ConvNeXt V2's
Global Response Normalization and Ghost batch norm, each on 2-D or 3-D feature maps (N, C, *S).

Named apart from the older ones on purpose: ``layer`` in this registry is GroupNorm(1), one set of
statistics over (C, H, W) per sample; ``layer_channels`` here normalizes each pixel over its C
channels alone, as ConvNeXt's ``LayerNorm2d`` does. For x of shape (N, C, *S), at each (n, s):

- ``layer_channels``: y = (x - mean_c x) / sqrt(var_c x + eps) * w + b     (timm ``LayerNorm2d``)
- ``rms_channels``:   y = x / sqrt(mean_c x^2 + eps) * w                   (timm ``RmsNorm2d``)
- ``grn``: per (n, c), G = ||x_{n,c,:}||_2 over space, N = G / (mean_c G + eps),
  y = x + gamma * (x * N) + beta, gamma = beta = 0 at the start (Woo et al., ConvNeXt V2, 2023;
  timm ``GlobalResponseNorm``). It is a feature-competition layer, the identity at initialisation,
  not a standardization: a net with only GRN in its norm slot starts as a net with no norm.
- ``ghost_batch``: batch norm whose training statistics come from virtual batches of
  ``virtual_batch`` samples inside the real batch (Hoffer, Hubara & Soudry, 2017), each chunk
  normalized by its own mean and variance and each updating the running statistics once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.nn.batchnorm import BatchNorm2d


def _in_format_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` (channels moved last and back) laid out as an NCHW input ``x`` is. Handing channels-last
    strides on to the next conv switches it to its channels-last kernels: in float32 on the CPU this
    torch build's channels-last conv backward crashes (a segfault on an AVX2 CPU, 2026-12-06). A
    channels-last input (bf16 with ``trainer.channels_last``) gets ``y`` as it is, channels-last.
    Only the default format is queried: under vmap (packed seeds) torch cannot query the others."""
    return y.contiguous() if x.is_contiguous() else y


class LayerNormChannels(nn.Module):
    """LayerNorm over the channels at each position (ConvNeXt's LayerNorm2d), any number of spatial dims."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)  # trailing dims
        return _in_format_of(y.movedim(-1, 1), x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


class RMSNormChannels(nn.Module):
    """RMSNorm over the channels at each position: no centring, a per-channel scale."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_format_of(
            F.rms_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.eps).movedim(-1, 1), x
        )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-first maps: x + gamma * (x * G / mean_c G) + beta."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(num_channels))  # gamma: zero, so GRN starts as the identity
        self.bias = nn.Parameter(torch.zeros(num_channels))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        g = x.flatten(2).norm(p=2, dim=2).view(*x.shape[:2], *(1,) * (x.dim() - 2))
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(shape), self.weight.view(shape), x * n)


class GhostBatchNorm(BatchNorm2d):
    """Batch norm with statistics from virtual batches of ``virtual_batch`` samples in training
    (the last chunk may be smaller); eval uses the running statistics, as batch norm does."""

    def __init__(
        self, num_features: int, virtual_batch: int = 2, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ):
        super().__init__(num_features, eps, momentum, affine)
        self.virtual_batch = int(virtual_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or x.shape[0] <= self.virtual_batch:
            return super().forward(x)
        chunks = [
            F.batch_norm(c, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps)
            for c in torch.split(x, self.virtual_batch)
        ]
        self.num_batches_tracked.add_(len(chunks))
        return torch.cat(chunks)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch={self.virtual_batch}"
