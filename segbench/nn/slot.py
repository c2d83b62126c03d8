"""``NormSlot``: everything a model needs to put one kind of norm after each conv."""

from __future__ import annotations

import contextlib
import zlib
from typing import Callable

import torch
from torch import nn

from segbench.nn.conditional import Conditioner
from segbench.nn.norms import ACTIVATING_NORMS, CONDITIONAL_NORMS, build_norm, canonical_norm_name, check_dims
from segbench.nn.weight_std import StdConv2d, StdConv3d

CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
# Norms that change the conv in front of them: weight standardization is a property of the conv.
NORM_CONVS: dict[str, dict[int, type[nn.Module]]] = {"ws_group": {2: StdConv2d, 3: StdConv3d}}


class NormSlot:
    """A norm choice bound to its options and to the model's input.

    Args:
        norm: a registered name (``"group"``), or a callable ``f(num_channels) -> nn.Module``.
        options: the norm's own options (``{"num_groups": 4}``).
        in_channels: channels of the model's input, for conditional norms.
        cond_channels: which input channels condition AdaIN/SPADE (None: all).
        style_dim: AdaIN's style-code width.
        dims: 2 for images, 3 for volumes; a norm without a 3-D form is refused in one line.
    """

    def __init__(
        self,
        norm: str | Callable[[int], nn.Module] = "batch",
        options: dict | None = None,
        in_channels: int = 1,
        cond_channels: list[int] | None = None,
        style_dim: int = 64,
        dims: int = 2,
    ):
        self.options, self.dims = dict(options or {}), dims
        if callable(norm):
            self.name, self._factory = getattr(norm, "__name__", "custom"), norm
        else:
            self.name, self._factory = canonical_norm_name(norm), None
        self.conditional = self.name in CONDITIONAL_NORMS
        style_dim = int(self.options.get("style_dim", style_dim))  # AdaIN's option sizes the encoder too
        self.in_channels, self.cond_channels, self.style_dim = in_channels, cond_channels, style_dim
        n_cond = in_channels if cond_channels is None else len(cond_channels)
        self._context = {"cond_channels": n_cond, "style_dim": style_dim, "dims": dims}
        if self._factory is None:
            check_dims(self.name, dims)  # before any layer is built
        self._built: dict[str, int] = {}
        self._last_conv: nn.Conv2d | None = None  # for a norm that works with the conv in front (CBN)

    @contextlib.contextmanager
    def _own_rng(self, kind: str):
        """Draw this layer's initial weights from its own seed, leaving the global stream alone.

        Arms of a comparison differ only in the norm: whether a norm has random parameters, or
        whether the conv before it has a bias, must not shift the random numbers of any layer
        the arms share. Each slot-built layer is seeded from (global seed, its kind, its order
        among layers of that kind), so a conditioner or a norm never shifts the convs' seeds.
        """
        self._built[kind] = self._built.get(kind, 0) + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{torch.initial_seed()}/{kind}/{self._built[kind]}".encode()))
            yield

    @property
    def bias(self) -> bool:
        """Convs before a norm that re-centres its input need no bias of their own."""
        return self._factory is not None or self.name == "none"

    def __call__(self, num_channels: int, act: bool = False) -> nn.Module:
        """The norm after the latest ``conv``; ``act``: the model applies ``activation()`` after it."""
        conv, self._last_conv = self._last_conv, None
        with self._own_rng("norm"):
            if self._factory is not None:
                return self._factory(num_channels)
            context = {**self._context, "apply_act": act, "conv": conv}
            return build_norm(self.name, num_channels, context=context, **self.options)

    def activation(self) -> nn.Module:
        """What follows a norm built with ``act=True``: ReLU, or nothing for a norm-activation layer."""
        return nn.Identity() if self.name in ACTIVATING_NORMS else nn.ReLU()

    def conv(
        self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool | None = None
    ) -> nn.Module:
        """The conv in front of a slot norm: of the norm's kind (``NORM_CONVS``), and biased only
        when the norm does not re-centre (see ``bias``) unless ``bias`` says otherwise.

        Its weights come from the same seed whatever the norm, so paired arms start equal.
        """
        kind = NORM_CONVS.get(self.name, CONVS)[self.dims]
        with self._own_rng("conv"):
            conv = kind(cin, cout, kernel, stride, padding, bias=self.bias if bias is None else bias)
        self._last_conv = conv
        return conv

    def conditioner(self) -> Conditioner | None:
        """The module that turns the model's input into a ``Condition``; None when unconditional."""
        if not self.conditional:
            return None
        style = self.style_dim if self.name == "adain" else None
        with self._own_rng("conditioner"):
            return Conditioner(self.in_channels, self.cond_channels, style, dims=self.dims)


def apply_norm(norm: nn.Module, x, cond):
    """Call a norm with the condition only when it takes one."""
    return norm(x, cond) if getattr(norm, "conditional", False) else norm(x)


def norm_scalars(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per layer, what a norm reports of its learned state (``tensorboard_scalars``, e.g. the IN/LN/BN
    mixture of switchable norm); empty for norms with nothing to report."""
    return {
        name: module.tensorboard_scalars()
        for name, module in model.named_modules()
        if callable(getattr(module, "tensorboard_scalars", None))
    }
