"""Weight standardization (Qiao et al. 2019): each output channel's filter is z-scored on the fly.

    Ŵ[c] = (W[c] - mean(W[c])) / sqrt(var(W[c]) + ε),   over (C_in, kH, kW)

Paired with group norm (``norm=ws_group``) it matches BN at large batches without batch
statistics. The norm slot builds it in place of ``nn.Conv2d`` in front of the norm.
"""

from __future__ import annotations

import torch
from torch import nn


class _WeightStandardized:
    """Mixed into a conv class: its weight is standardized per output channel at every forward (biased var)."""

    def __init__(self, *args, ws_eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight.flatten(1)
        mean = w.mean(1, keepdim=True)
        var = w.var(1, unbiased=False, keepdim=True)
        return ((w - mean) / torch.sqrt(var + self.ws_eps)).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ws_eps={self.ws_eps}"


class StdConv2d(_WeightStandardized, nn.Conv2d):
    """``nn.Conv2d`` with weight standardization."""


class StdConv3d(_WeightStandardized, nn.Conv3d):
    """``nn.Conv3d`` with weight standardization, for volumes."""
