"""Batch norm with statistics over every DDP rank, on CPU (gloo) as well as GPU.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors. This module computes the statistics in two
differentiable all-reduces: per-channel sum and count give the global mean, then the sum of
squared deviations from that mean gives the variance. (E[x^2] - E[x]^2 from float32 sums loses
the variance to cancellation when the mean is large: 1e-1 error at a mean offset of 1000.)
Gradients flow back through both reductions to every rank. On CUDA the trainer
swaps it for torch's fused ``nn.SyncBatchNorm`` (see ``segbench.train.distributed``); both give
the same numbers. Outside a process group it is ``BatchNorm2d`` and says so once.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

from segbench.nn.batchnorm import BatchNorm2d

_warned_single_process = False


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class SyncBatchNorm(BatchNorm2d):
    """``BatchNorm2d`` whose training statistics span all ranks of the default process group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            if self.training:
                _warn_single_process()
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in float32, also under bf16/fp16 autocast
        c = x.shape[1]
        reduce = (0, *range(2, x.dim()))  # batch and every spatial axis: 2-D images or 3-D volumes
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([x.sum(reduce), count]))  # (C + 1,)
        n = total[-1]
        mean = total[:c] / n
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # Second pass: squared deviations from the global mean, exact whatever the offset.
        var = all_reduce_sum(((x - mean.view(shape)) ** 2).sum(reduce)) / n  # biased, as BN normalizes with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # cumulative average, as nn.BatchNorm2d does
                    momentum = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def _warn_single_process() -> None:
    global _warned_single_process
    # Under torchrun (WORLD_SIZE > 1) a forward before the process group exists is the preflight's
    # trial step: the run itself will be multi-process, so saying otherwise would be false.
    if not _warned_single_process and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        _warned_single_process = True
        warnings.warn("norm=syncbatch outside a multi-process run: it behaves as norm=batch", stacklevel=3)
