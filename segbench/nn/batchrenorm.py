"""Batch renormalization (Ioffe 2017, arXiv 1702.03275).

Training normalizes with the batch's statistics but corrects them toward the running ones:
``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, both treated as constants in backprop. With
``r_max = 1, d_max = 0`` it is batch norm; as the clips open, train and eval outputs agree.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch renorm for (N, C, H, W); eval mode is plain BN with the running statistics.

    Args:
        num_features: channels C.
        eps: added to the variance.
        momentum: running-statistics update rate (the paper's alpha).
        affine: learn per-channel gamma and beta.
        r_max, d_max: the clip limits once warm-up is over.
        warmup_steps: training steps over which the limits open linearly from (1, 0); the paper
            trains as plain BN first and then relaxes them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.01,
                 affine: bool = True, r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 0):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"batch renorm needs r_max >= 1 and d_max >= 0, got {r_max}, {d_max}")
        self.r_max, self.d_max, self.warmup_steps = float(r_max), float(d_max), int(warmup_steps)

    def current_limits(self) -> tuple[float, float]:
        """(r_max, d_max) after the linear warm-up from (1, 0)."""
        done = 1.0
        if self.warmup_steps > 0:
            done = min(1.0, int(self.num_batches_tracked) / self.warmup_steps)
        return 1.0 + (self.r_max - 1.0) * done, self.d_max * done

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        mean = x.mean(dims)  # (C,)
        var = x.var(dims, unbiased=False)
        std = torch.sqrt(var + self.eps)
        r_max, d_max = self.current_limits()
        with torch.no_grad():
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (std / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-d_max, d_max)
            n = x.numel() / x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked.add_(1)
        shape = (1, -1, 1, 1)
        x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        if self.affine:
            x_hat = x_hat * self.weight.view(shape) + self.bias.view(shape)
        return x_hat

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
                f"d_max={self.d_max}, warmup_steps={self.warmup_steps}")
