"""Cross-iteration batch norm (Yao et al., CVPR 2021): BN statistics pooled over the last k steps.

A small batch gives noisy statistics; CBN averages them with those of the previous k - 1 steps.
Those were computed with older weights, so each is first moved to the current weights by a first
order Taylor step in the weights of the conv in front of the norm (the paper shows that layer
alone is enough):

    μ_{t-τ}(θ_t) ≈ μ_{t-τ} + ∂μ_{t-τ}/∂θ_{t-τ} · (θ_t - θ_{t-τ})     (the same for ν = E[x²])
    μ̄ = mean_τ μ_{t-τ}(θ_t),   σ̄² = mean_τ max(ν_{t-τ}(θ_t), μ_{t-τ}(θ_t)²) - μ̄²

Gradients flow through the current step's statistics only. For the first ``burnin`` steps the
weights move too fast for a Taylor step and the layer is plain BN, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CrossIterationBatchNorm2d(nn.Module):
    """CBN after ``conv`` (the layer whose weights the statistics are compensated for).

    Args:
        num_features: channels.
        window: k, the steps whose statistics are pooled (1: plain BN).
        burnin: steps of plain BN before pooling starts.
        momentum, eps: as in BN; the running statistics average the pooled ones.
        conv: the conv in front; kept as a plain reference, not a submodule (its weights belong
            to the conv). Without one the layer is plain BN.
    """

    def __init__(
        self,
        num_features: int,
        window: int = 4,
        burnin: int = 100,
        momentum: float = 0.1,
        eps: float = 1e-5,
        conv: nn.Conv2d | None = None,
    ):
        super().__init__()
        self.window, self.burnin, self.momentum, self.eps = window, burnin, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._conv = [conv]  # a list keeps the conv out of this module's parameters and state dict
        self._history: list[tuple[torch.Tensor, ...]] = []  # (μ, ν, ∂μ/∂θ, ∂ν/∂θ, θ), newest first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        xf = x.float()
        mu, nu = xf.mean(dim=(0, 2, 3)), xf.square().mean(dim=(0, 2, 3))
        conv = self._conv[0]
        pool = (
            conv is not None
            and self.window > 1
            and int(self.num_batches_tracked) >= self.burnin
            and torch.is_grad_enabled()
            and x.requires_grad
            and conv.weight.requires_grad
        )
        if pool:
            mean, var = self._pooled(mu, nu, conv.weight)
        else:
            self._history.clear()
            mean, var = mu, nu - mu.square()
        with torch.no_grad():
            n = x.numel() / x.shape[1]
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked += 1
        scale = self.weight / torch.sqrt(var.clamp_min(0) + self.eps)
        shift = self.bias - mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _pooled(self, mu: torch.Tensor, nu: torch.Tensor, theta: torch.Tensor):
        # Channel c's statistics depend on theta[c] alone, so one backward with ones gives every
        # channel's gradient in its own slice of the weight.
        ones = torch.ones_like(mu)
        dmu = torch.autograd.grad(mu, theta, ones, retain_graph=True)[0]
        dnu = torch.autograd.grad(nu, theta, ones, retain_graph=True)[0]
        mus, nus = [mu], [nu]
        now = theta.detach()
        for old_mu, old_nu, old_dmu, old_dnu, old_theta in self._history:
            step = now - old_theta
            moved_mu = old_mu + (old_dmu * step).flatten(1).sum(1)
            moved_nu = old_nu + (old_dnu * step).flatten(1).sum(1)
            mus.append(moved_mu)
            nus.append(torch.maximum(moved_nu, moved_mu.square()))  # a valid second moment
        self._history.insert(0, (mu.detach(), nu.detach(), dmu.detach(), dnu.detach(), now.clone()))
        del self._history[self.window - 1 :]
        mean = torch.stack(mus).mean(0)
        return mean, torch.stack(nus).mean(0) - mean.square()

    def extra_repr(self) -> str:
        return (
            f"{self.weight.numel()}, window={self.window}, burnin={self.burnin}, "
            f"momentum={self.momentum}, eps={self.eps}, compensated={self._conv[0] is not None}"
        )
