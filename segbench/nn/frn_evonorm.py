"""Norm-activation layers found by replacing BN + ReLU as one unit: FRN + TLU, EvoNorm-B0, EvoNorm-S0.

Each normalizes *and* applies its own non-linearity when ``apply_act`` (the slot sets it for a
norm followed by ReLU, and the model then skips its ReLU); before a residual sum ``apply_act`` is
off and only the affine normalization remains, as in the papers' ResNets. Statistics are
computed in float32 so bf16/fp16 inputs do not lose them.
"""

from __future__ import annotations

import torch
from torch import nn


def _channel(t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1), or (1, C, 1, 1, 1) for a 5-D (volume) input."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


class FilterResponseNorm2d(nn.Module):
    """FRN with TLU (Singh & Krishnan, CVPR 2020): per sample and channel, no mean subtracted,

        ν² = mean_{H,W} x²,   y = γ · x / sqrt(ν² + ε) + β,   z = max(y, τ)  (TLU, learned τ).

    Batch-independent: every sample is normalized alone, so batch size changes nothing.
    """

    def __init__(self, num_features: int, eps: float = 1e-6, apply_act: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features)) if apply_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()
        nu2 = x.float().square().mean(dim=_spatial(x), keepdim=True)
        y = x * torch.rsqrt(nu2 + self.eps).to(x.dtype)
        y = y * _channel(self.weight, d).to(x.dtype) + _channel(self.bias, d).to(x.dtype)
        return torch.maximum(y, _channel(self.tau, d).to(x.dtype)) if self.tau is not None else y

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, tlu={self.tau is not None}"


def _std(x: torch.Tensor, dims, eps: float) -> torch.Tensor:
    return x.float().var(dim=dims, unbiased=False, keepdim=True).add(eps).sqrt().to(x.dtype)


class EvoNormB0(nn.Module):
    """EvoNorm-B0 (Liu et al., NeurIPS 2020), the batch-dependent variant:

        y = x / max( sqrt(s²_{N,H,W} + ε),  v · x + sqrt(s²_{H,W} + ε) ) · γ + β

    The batch variance (a moving average of it in eval mode) mixes with the instance variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-3, momentum: float = 0.1, apply_act: bool = True):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()
        if self.v is not None:
            if self.training:
                var = x.float().var(dim=(0, *_spatial(x)), unbiased=False)
                n = x.numel() / x.shape[1]
                with torch.no_grad():  # the running estimate is unbiased, as BN's
                    self.running_var.mul_(1 - self.momentum).add_(var.detach() * self.momentum * n / max(n - 1, 1))
            else:
                var = self.running_var
            batch_std = _channel(var.add(self.eps).sqrt(), d).to(x.dtype)
            x = x / torch.maximum(
                batch_std.expand_as(x), x * _channel(self.v, d).to(x.dtype) + _std(x, _spatial(x), self.eps)
            )
        return x * _channel(self.weight, d).to(x.dtype) + _channel(self.bias, d).to(x.dtype)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al., NeurIPS 2020), the sample-based variant:

        y = x · σ(v · x) / sqrt(s²_{group,H,W} + ε) · γ + β

    A swish-like gate over a group standard deviation: batch-independent, like group norm.
    """

    def __init__(self, num_features: int, num_groups: int = 8, eps: float = 1e-5, apply_act: bool = True):
        super().__init__()
        self.groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()
        if self.v is not None:
            n, c, *space = x.shape
            grouped = (n, self.groups, c // self.groups, *space)
            std = _std(x.reshape(grouped), tuple(range(2, d + 1)), self.eps)
            std = std.expand(grouped).reshape(x.shape)
            x = x * torch.sigmoid(x * _channel(self.v, d).to(x.dtype)) / std
        return x * _channel(self.weight, d).to(x.dtype) + _channel(self.bias, d).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.groups}, eps={self.eps}"
