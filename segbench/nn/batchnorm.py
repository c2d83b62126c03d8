"""``BatchNorm2d`` with a diagnostic eval mode; a leaf module that the registry and SyncBN both import."""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from segbench.errors import invalid_choice


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (on 2-D or 3-D feature maps) that can also normalize with the batch's
    statistics in eval mode.

    ``eval_stats="batch"`` reproduces what a TF1 graph does when ``is_training`` stays true at
    test time; ``update_stats=False`` what it does when the moving-average ops in ``UPDATE_OPS``
    never run (a plain ``optimizer.minimize(loss)``): training normalizes with batch statistics as
    usual, and the running statistics stay at their initial (0, 1). Both are diagnostics of the
    first question, not recommendations.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        eval_stats: str = "running",
        update_stats: bool = True,
    ):
        if eval_stats not in ("running", "batch"):
            raise invalid_choice("norm.eval_stats", eval_stats, ["running", "batch"])
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.eval_stats, self.update_stats = eval_stats, bool(update_stats)

    def _check_input_dim(self, x):
        # One class for images (N, C, H, W) and volumes (N, C, D, H, W): the statistics are per
        # channel over the batch and every spatial axis either way.
        if x.dim() not in (4, 5):
            raise ValueError(f"expected a 4-D (N, C, H, W) or 5-D (N, C, D, H, W) input, got {x.dim()}-D")

    def forward(self, x):
        if (not self.training and self.eval_stats == "batch") or (self.training and not self.update_stats):
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eval_stats={self.eval_stats}, update_stats={self.update_stats}"
