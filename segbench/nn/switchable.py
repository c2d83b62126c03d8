"""Switchable normalization (Luo et al., ICLR 2019): a learned mix of IN, LN and BN statistics.

    μ = Σ_k softmax(λ)_k μ_k,   σ² = Σ_k softmax(λ')_k σ²_k,   k ∈ {IN, LN, BN}
    y = γ (x - μ) / sqrt(σ² + ε) + β

LN and BN statistics are derived from IN's (the mean of per-instance means and second moments),
so the three cost one reduction. Which statistics a layer learns to trust at a given batch size
answers the project's question directly, so ``tensorboard_scalars`` reports the mixture weights
and the trainer logs them at every validation (``norm/<layer>/mean_bn`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("in", "ln", "bn")


class SwitchableNorm2d(nn.Module):
    """SN over (N, C, H, W); eval mode uses the running BN statistics for the BN share."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(3))  # softmax(ones) = equal thirds at the start
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xf = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(n, c, -1)  # half -> float32, float64 stays
        mean_in = xf.mean(-1, keepdim=True)  # (N, C, 1)
        moment_in = xf.square().mean(-1, keepdim=True)
        var_in = moment_in - mean_in.square()
        mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1, 1)
        var_ln = moment_in.mean(1, keepdim=True) - mean_ln.square()
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)  # (1, C, 1)
            var_bn = moment_in.mean(0, keepdim=True) - mean_bn.square()
            with torch.no_grad():
                count = n * h * w
                self.running_mean.lerp_(mean_bn.flatten(), self.momentum)
                self.running_var.lerp_(var_bn.flatten() * count / max(count - 1, 1), self.momentum)
        else:
            mean_bn, var_bn = self.running_mean.view(1, c, 1), self.running_var.view(1, c, 1)
        mw, vw = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        y = (xf - mean) / torch.sqrt(var.clamp_min(0) + self.eps)
        y = y.reshape(n, c, h, w).to(x.dtype)
        return y * self.weight.view(1, -1, 1, 1).to(x.dtype) + self.bias.view(1, -1, 1, 1).to(x.dtype)

    def mixture(self) -> dict[str, float]:
        """The learned shares: ``{"mean_in": .., "mean_ln": .., "mean_bn": .., "var_in": .., ...}``."""
        with torch.no_grad():
            mw, vw = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        return {
            **{f"mean_{k}": float(v) for k, v in zip(KINDS, mw)},
            **{f"var_{k}": float(v) for k, v in zip(KINDS, vw)},
        }

    tensorboard_scalars = mixture
