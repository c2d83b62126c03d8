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

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class Precision:
    """How one run computes: the autocast dtype (None: float32) and, for float16, its gradient scaler."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def precision_for(name, device: torch.device) -> Precision:
    """``trainer.precision`` (``32``, ``bf16-mixed``, ``16-mixed``) on ``device``."""
    key = str(name)
    if key not in PRECISIONS:
        raise invalid_choice("trainer.precision", name, PRECISIONS)
    dtype = PRECISIONS[key]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return Precision(device.type, dtype, scaler)
