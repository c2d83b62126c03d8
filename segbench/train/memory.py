"""Will the first training step fit? An estimate made before any weight is allocated.

A config such as ``model.depth=12`` asks for tens of gigabytes of weights; building it for real
ends in the kernel's out-of-memory kill (no message) or a 50-line allocator traceback. Here the
model is built on PyTorch's ``meta`` device (shapes, no storage), one forward pass of a batch of
the run's real input shape is traced there, and the step's memory is estimated as

    weights x (1 + 1 gradient + optimizer slots)  +  every layer's output (what autograd keeps)

in float32. That is an estimate (it ignores the allocator's slack and temporaries, and counts
outputs an in-place activation would share), so a run is refused only when it exceeds the memory
the device has free — the figure and the setting to lower go in the one line.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.errors import SegbenchError

GIB = 2**30
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 1}  # state tensors per weight (momentum, ...)


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the run will train, for a CPU run: the kernel's MemAvailable.

    None for a GPU: asking CUDA would create a context on the device in the preflight of every
    rank; there, an out-of-memory error at the first step is said in one line instead
    (``segbench.train.app``)."""
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def activation_bytes(model: nn.Module, sample: torch.Tensor, batch: int) -> int | None:
    """Bytes of every leaf module's output for a batch of ``sample``-shaped inputs, traced on meta."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * 4

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        model(torch.empty((batch, *sample.shape), device="meta"))
    except Exception:  # noqa: BLE001 - an op without a meta kernel: the weights alone are still checked
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return total


def estimate(build, sample: torch.Tensor, batch: int, optimizer: str) -> tuple[int, int | None] | None:
    """(bytes of weights, gradients and optimizer state; bytes of activations or None) of one step;
    None when the model cannot be built on the meta device (a builder that reads weights)."""
    try:
        with torch.device("meta"):
            model = build()
    except SegbenchError:
        raise
    except Exception:  # noqa: BLE001 - the real build, next, says what is wrong with it
        return None
    weights = sum(p.numel() for p in model.parameters()) * 4
    slots = OPTIMIZER_SLOTS.get(str(optimizer).lower(), 2)
    return weights * (2 + slots), activation_bytes(model.train(), sample, batch)


def check_fits(build, sample: torch.Tensor, batch: int, optimizer: str, device: torch.device) -> None:
    """Refuse in one line a first step that needs more memory than ``device`` has free."""
    free = available_bytes(device)
    found = estimate(build, sample, batch, optimizer) if free is not None else None
    if found is None:
        return
    state, activations = found
    need = state + (activations or 0)
    if need <= free:
        return
    parts = f"weights, gradients and optimizer state {state / GIB:.1f} GiB" + (
        f", activations {activations / GIB:.1f} GiB at data.batch_size={batch}" if activations else ""
    )
    lower = "model.width or model.depth" if state > free / 2 else "data.batch_size, data.size or model.width"
    raise SegbenchError(
        f"the first training step needs about {need / GIB:.1f} GiB ({parts}), more than the "
        f"{free / GIB:.1f} GiB free on {device.type}; lower {lower}"
    )
