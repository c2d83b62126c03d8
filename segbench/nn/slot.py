"""``NormSlot``: everything a model needs to put one kind of norm after each conv."""

from __future__ import annotations

from typing import Callable

from torch import nn

from segbench.nn.conditional import Conditioner
from segbench.nn.norms import CONDITIONAL_NORMS, build_norm, canonical_norm_name


class NormSlot:
    """A norm choice bound to its options and to the model's input.

    Args:
        norm: a registered name (``"group"``), or a callable ``f(num_channels) -> nn.Module``.
        options: the norm's own options (``{"num_groups": 4}``).
        in_channels: channels of the model's input, for conditional norms.
        cond_channels: which input channels condition AdaIN/SPADE (None: all).
        style_dim: AdaIN's style-code width.
    """

    def __init__(self, norm: str | Callable[[int], nn.Module] = "batch", options: dict | None = None,
                 in_channels: int = 1, cond_channels: list[int] | None = None, style_dim: int = 64):
        self.options = dict(options or {})
        if callable(norm):
            self.name, self._factory = getattr(norm, "__name__", "custom"), norm
        else:
            self.name, self._factory = canonical_norm_name(norm), None
        self.conditional = self.name in CONDITIONAL_NORMS
        style_dim = int(self.options.get("style_dim", style_dim))  # AdaIN's option sizes the encoder too
        self.in_channels, self.cond_channels, self.style_dim = in_channels, cond_channels, style_dim
        n_cond = in_channels if cond_channels is None else len(cond_channels)
        self._context = {"cond_channels": n_cond, "style_dim": style_dim}

    @property
    def bias(self) -> bool:
        """Convs before a norm that re-centres its input need no bias of their own."""
        return self._factory is not None or self.name == "none"

    def __call__(self, num_channels: int) -> nn.Module:
        if self._factory is not None:
            return self._factory(num_channels)
        return build_norm(self.name, num_channels, context=self._context, **self.options)

    def conditioner(self) -> Conditioner | None:
        """The module that turns the model's input into a ``Condition``; None when unconditional."""
        if not self.conditional:
            return None
        style = self.style_dim if self.name == "adain" else None
        return Conditioner(self.in_channels, self.cond_channels, style)


def apply_norm(norm: nn.Module, x, cond):
    """Call a norm with the condition only when it takes one."""
    return norm(x, cond) if getattr(norm, "conditional", False) else norm(x)
