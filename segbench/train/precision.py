"""Mixed precision and memory format: ``trainer.precision`` and ``trainer.channels_last``.

``bf16-mixed`` runs the forward pass under ``torch.autocast`` in bfloat16 (CPUs with AVX-512 BF16
or AMX, and Ampere+ GPUs); ``16-mixed`` uses float16 with a gradient scaler, so small gradients do
not flush to zero. Weights, optimizer state and norm statistics stay float32: autocast keeps
batch and group norm in float32, and segbench's own norms compute their statistics in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from segbench.errors import invalid_choice

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "auto": None}


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic in hardware: an Ampere+ GPU, or a CPU with AVX-512
    BF16 or AMX (elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def emulated_bf16(precision: Precision, device) -> bool:
    """``bf16-mixed`` asked for where bf16 is emulated: float32 is faster there (an AVX2 CPU ran an
    FCN-8s step 10x slower in bf16-mixed than in float32: scripts/bench_fcn_precision.py)."""
    return precision.dtype is torch.bfloat16 and not fast_bf16(torch.device(device))


def resolve_precision(name, device: torch.device) -> str:
    """``auto`` -> ``bf16-mixed`` where bf16 is in hardware (measured 1.8x faster per step on this
    project's AVX-512 BF16 CPU, with val Dice within seed noise of float32), else ``32``."""
    key = str(name)
    if key not in PRECISIONS:
        raise invalid_choice("trainer.precision", name, PRECISIONS)
    if key == "auto":
        return "bf16-mixed" if fast_bf16(torch.device(device)) else "32"
    return key


@dataclass
class Precision:
    """How one run computes: the autocast dtype (None: float32) and, for float16, its gradient scaler."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @property
    def nhwc_backward_crashes(self) -> bool:
        """Float32 on the CPU: this torch build's channels-last conv backward segfaults there
        (measured, torch 2.14.1 on an AVX-512 CPU), while bf16's channels-last backward trains."""
        return self.device_type == "cpu" and self.dtype is None

    @property
    def name(self) -> str:
        return {None: "32", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def precision_for(name, device: torch.device) -> Precision:
    """``trainer.precision`` (``32``, ``bf16-mixed``, ``16-mixed``, ``auto``) on ``device``."""
    key = resolve_precision(name, device)
    dtype = PRECISIONS[key]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return Precision(device.type, dtype, scaler)
