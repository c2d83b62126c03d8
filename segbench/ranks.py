"""Which process this is and sums across processes: what evaluation and training both need of DDP.

A leaf module (torch only), so ``eval`` can reduce its per-case sums over ranks without importing
the trainer; process-group setup and model wrapping stay in ``segbench.train.distributed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank (a no-op on one process)."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; the input is left alone)."""
    if ctx.world_size == 1:
        return tensor
    out = tensor.clone()
    device_tensor = out.to(ctx.device) if ctx.device.type == "cuda" else out
    dist.all_reduce(device_tensor)
    return device_tensor.to(tensor.device)
