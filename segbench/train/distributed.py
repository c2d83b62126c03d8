"""torch.distributed glue: torchrun's environment in, a device and a rank out.

``torchrun --nproc_per_node=N -m segbench train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; this module
starts the process group (NCCL on GPU, gloo on CPU), wraps the model in DDP and reduces metric
sums. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from segbench.errors import SegbenchError, invalid_choice
from segbench.ranks import DistContext, all_reduce_sum, broadcast_object  # noqa: F401 (re-exported)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference not in DEVICES:
        raise invalid_choice("trainer.device", preference, DEVICES)
    if preference == "cuda" and not torch.cuda.is_available():
        raise SegbenchError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup(preference: str) -> DistContext:
    """Join torchrun's (or a multi-task SLURM job's) process group when there is one."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        # A SLURM job with one task per GPU (hydra/launcher=slurm): submitit derives torch's variables.
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend, timeout = "nccl" if device.type == "cuda" else "gloo", timedelta(minutes=5)
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restarts not in ("", "0") and "MASTER_ADDR" in os.environ:
            # torchrun restarted the workers: its store still holds the dead round's addresses under
            # the default keys (gloo then dials a process that is gone), so each round gets its own.
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                world,
                is_master=rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
                timeout=timeout,
            )
            dist.init_process_group(
                backend,
                store=dist.PrefixStore(f"segbench/restart{restarts}", store),
                rank=rank,
                world_size=world,
                timeout=timeout,
            )
        else:
            dist.init_process_group(backend, timeout=timeout)
    return DistContext(rank, world, local_rank, device)


def use_torch_syncbn(model: nn.Module) -> nn.Module:
    """Swap segbench's SyncBatchNorm for torch's fused CUDA one, keeping parameters and statistics."""
    from segbench.nn.syncbn import SyncBatchNorm

    for name, child in model.named_children():
        if isinstance(child, SyncBatchNorm):
            fused = nn.SyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            fused.load_state_dict(child.state_dict())
            setattr(model, name, fused.to(child.running_mean.device))
        else:
            use_torch_syncbn(child)
    return model


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    if ctx.world_size == 1:
        return model
    if ctx.device.type == "cuda":
        model = use_torch_syncbn(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index])
    return nn.parallel.DistributedDataParallel(model)


@contextlib.contextmanager
def main_rank_first(ctx: DistContext):
    """Rank 0 runs the block before the other ranks do (e.g. builds the data cache the others then
    only open); a no-op on one process."""
    if ctx.world_size > 1 and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:  # released whether rank 0 succeeded or not: the others then meet the same outcome
        if ctx.world_size > 1 and ctx.is_main:
            dist.barrier()


def shared_run_dir(run_dir, ctx: DistContext):
    """Rank 0's run directory on every rank, so that all ranks resume from the same checkpoint."""
    if ctx.world_size == 1:
        return run_dir
    holder = [str(run_dir)]
    dist.broadcast_object_list(holder, src=0)
    _SHARED_RUN_DIR[:] = [holder[0]]
    return type(run_dir)(holder[0])


_SHARED_RUN_DIR: list[str] = []  # rank 0's run folder, once shared_run_dir has run in this process


def job_run_dir(own):
    """The folder the job's checkpoints are in: rank 0's once it was shared, else ``own``."""
    return type(own)(_SHARED_RUN_DIR[0]) if _SHARED_RUN_DIR else own


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
