"""What ``segbench bench`` needs to time fairly on any device: the device itself, its name, timers
that wait for the GPU, a measured GEMM peak, and the FLOPs of one training step.
"""

from __future__ import annotations

import platform
import time

import torch

from segbench.errors import SegbenchError

DEVICES = ("auto", "cpu", "cuda")


def bench_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; ``cuda`` without a GPU is one line."""
    if name not in DEVICES:
        raise SegbenchError(f"--device={name!r} is not one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegbenchError("--device=cuda but torch sees no CUDA GPU here; use --device cpu")
    return torch.device(name)


def describe(device: torch.device) -> str:
    """The device in words, for the report: a GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``fn``, waiting for the device before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - start


def gemm_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the ceiling achieved FLOP/s is read against."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: kernel choice, allocation
    calls, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += timed(lambda: a @ b, 4, device)
        calls += 4
    return 2 * n**3 * calls / elapsed


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` (forward and backward), counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())
