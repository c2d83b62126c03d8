"""Layers: the normalization registry and the conditional norms."""

from segbench.nn.conditional import SPADE, AdaIN, Condition, Conditioner, adain
from segbench.nn.norms import (
    CONDITIONAL_NORMS,
    NORM_DIMS,
    NORMS,
    build_norm,
    canonical_norm_name,
    norm_options,
    register_norm,
)
from segbench.nn.slot import NormSlot, apply_norm

__all__ = [
    "AdaIN",
    "SPADE",
    "Condition",
    "Conditioner",
    "adain",
    "NORMS",
    "NORM_DIMS",
    "CONDITIONAL_NORMS",
    "build_norm",
    "canonical_norm_name",
    "norm_options",
    "register_norm",
    "NormSlot",
    "apply_norm",
]
