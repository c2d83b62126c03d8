"""Batch renormalization (Ioffe 2017, arXiv 1702.03275).

Training normalizes with the batch's statistics but corrects them toward the running ones:
``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, both treated as constants in backprop. With
``r_max = 1, d_max = 0`` it is batch norm; as the clips open, train and eval outputs agree.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.nn.batchnorm import BatchNorm2d


class BatchRenorm2d(nn.BatchNorm2d):
    _check_input_dim = BatchNorm2d._check_input_dim  # 2-D images or 3-D volumes

    """Batch renorm for (N, C, H, W); eval mode is plain BN with the running statistics.

    Args:
        num_features: channels C.
        eps: added to the variance.
        momentum: running-statistics update rate (the paper's alpha).
        affine: learn per-channel gamma and beta.
        momentum: running-statistics update rate (the paper's alpha); None: cumulative average
            (what precise BN sets while it recomputes the statistics).
        r_max, d_max: the clip limits once relaxed.
        hold_steps: training steps as plain BN (limits 1 and 0) while the running statistics settle.
        r_relax_steps, d_relax_steps: steps after ``hold_steps`` over which r_max opens from 1 and
            d_max from 0. The paper (section 4.1) holds 5k steps, then opens r_max over 40k and d_max
            over 25k steps of a 130k-step run; the defaults keep those proportions for short runs.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.01,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        hold_steps: int = 20,
        r_relax_steps: int = 160,
        d_relax_steps: int = 100,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"batch renorm needs r_max >= 1 and d_max >= 0, got {r_max}, {d_max}")
        if min(hold_steps, r_relax_steps, d_relax_steps) < 0:
            raise ValueError(
                f"batch renorm's hold and relax steps must be >= 0, got {hold_steps}, {r_relax_steps}, {d_relax_steps}"
            )
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.hold_steps, self.r_relax_steps, self.d_relax_steps = (
            int(hold_steps),
            int(r_relax_steps),
            int(d_relax_steps),
        )

    def current_limits(self) -> tuple[float, float]:
        """(r_max, d_max) at this step: (1, 0) while holding, then opening linearly to the set limits."""
        after = int(self.num_batches_tracked) - self.hold_steps

        def opened(steps: int) -> float:
            if after < 0:
                return 0.0
            return 1.0 if steps == 0 else min(1.0, after / steps)

        return 1.0 + (self.r_max - 1.0) * opened(self.r_relax_steps), self.d_max * opened(self.d_relax_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, *range(2, x.dim()))  # batch and every spatial axis: 2-D images or 3-D volumes
        dtype, x = x.dtype, x.float()  # statistics in float32, also under bf16/fp16 autocast
        mean = x.mean(dims)  # (C,)
        var = x.var(dims, unbiased=False)
        std = torch.sqrt(var + self.eps)
        r_max, d_max = self.current_limits()
        with torch.no_grad():
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (std / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-d_max, d_max)
            n = x.numel() / x.shape[1]
            self.num_batches_tracked.add_(1)
            # momentum=None is a cumulative average, as in torch's BatchNorm (precise BN relies on it).
            rate = 1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
            self.running_mean.lerp_(mean, rate)
            self.running_var.lerp_(var * n / max(n - 1, 1), rate)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        if self.affine:
            x_hat = x_hat * self.weight.view(shape) + self.bias.view(shape)
        x_hat = x_hat.to(dtype)
        return x_hat

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
            f"d_max={self.d_max}, hold_steps={self.hold_steps}, r_relax_steps={self.r_relax_steps}, "
            f"d_relax_steps={self.d_relax_steps}"
        )
