"""The normalization registry: one name in, one ``nn.Module`` out, channel count first.

Every entry is a builder ``builder(num_channels, **options)``. The options a user may set are the
builder's keyword parameters; anything else is rejected with the list of valid ones. Models also
pass *context* (``cond_channels``, ``style_dim``) that only conditional norms take, so context is
filtered to what each builder accepts instead of being validated.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from segbench.errors import SegbenchError, invalid_choice
from segbench.nn.batchnorm import BatchNorm2d


def _none(num_channels: int, dims: int = 2) -> nn.Module:
    return nn.Identity()


def _batch(
    num_channels: int,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    affine: bool = True,
    track_running_stats: bool = True,
    eval_stats: str = "running",
    update_stats: bool = True,
    dims: int = 2,
) -> nn.Module:
    return BatchNorm2d(num_channels, eps, momentum, affine, track_running_stats, eval_stats, update_stats)


def _syncbatch(
    num_channels: int,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    affine: bool = True,
    track_running_stats: bool = True,
    eval_stats: str = "running",
    dims: int = 2,
) -> nn.Module:
    from segbench.nn.syncbn import SyncBatchNorm

    return SyncBatchNorm(num_channels, eps, momentum, affine, track_running_stats, eval_stats)


def _instance(num_channels: int, eps: float = 1e-5, affine: bool = True, dims: int = 2) -> nn.Module:
    # affine defaults to True: a norm slot that silently drops its scale and shift is a surprise.
    kind = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    return kind(num_channels, eps=eps, affine=affine, track_running_stats=False)


def _groups(num_channels: int, num_groups: int | None, group_size: int | None) -> int:
    """The group count for ``num_channels``, from a count or a size, refused when it does not divide."""
    if group_size is not None:
        if num_channels % group_size:
            raise SegbenchError(
                f"norm.group_size={group_size} does not divide a layer's "
                f"{num_channels} channels; pick a divisor of {num_channels}"
            )
        num_groups = num_channels // group_size
    if not num_groups or num_groups < 1:
        raise SegbenchError(f"norm.num_groups={num_groups} must be a positive integer")
    if num_channels % num_groups:
        raise SegbenchError(
            f"norm.num_groups={num_groups} does not divide a layer's {num_channels} "
            f"channels; pick a divisor of {num_channels} or set norm.group_size"
        )
    return num_groups


def _group(
    num_channels: int,
    num_groups: int | None = 8,
    group_size: int | None = None,
    eps: float = 1e-5,
    affine: bool = True,
    dims: int = 2,
) -> nn.Module:
    return nn.GroupNorm(_groups(num_channels, num_groups, group_size), num_channels, eps=eps, affine=affine)


def _ws_group(
    num_channels: int,
    num_groups: int | None = 8,
    group_size: int | None = None,
    eps: float = 1e-5,
    affine: bool = True,
    dims: int = 2,
) -> nn.Module:
    # The norm is group norm; what makes it WS+GN is the conv the slot puts in front (see NORM_CONVS).
    return _group(num_channels, num_groups, group_size, eps, affine)


def _frn(num_channels: int, eps: float = 1e-6, apply_act: bool = True, dims: int = 2) -> nn.Module:
    from segbench.nn.frn_evonorm import FilterResponseNorm2d

    return FilterResponseNorm2d(num_channels, eps, apply_act)


def _evonorm_b0(
    num_channels: int, eps: float = 1e-3, momentum: float = 0.1, apply_act: bool = True, dims: int = 2
) -> nn.Module:
    from segbench.nn.frn_evonorm import EvoNormB0

    return EvoNormB0(num_channels, eps, momentum, apply_act)


def _evonorm_s0(
    num_channels: int,
    num_groups: int | None = 8,
    group_size: int | None = None,
    eps: float = 1e-5,
    apply_act: bool = True,
    dims: int = 2,
) -> nn.Module:
    from segbench.nn.frn_evonorm import EvoNormS0

    return EvoNormS0(num_channels, _groups(num_channels, num_groups, group_size), eps, apply_act)


def _crossbatch(
    num_channels: int,
    window: int = 4,
    burnin: int = 100,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: nn.Module | None = None,
) -> nn.Module:
    from segbench.nn.crossbatch import CrossIterationBatchNorm2d

    if window < 1 or burnin < 0:
        raise SegbenchError(f"norm.window={window} must be at least 1 and norm.burnin={burnin} at least 0")
    return CrossIterationBatchNorm2d(num_channels, window, burnin, momentum, eps, conv)


def _switchable(num_channels: int, momentum: float = 0.1, eps: float = 1e-5) -> nn.Module:
    from segbench.nn.switchable import SwitchableNorm2d

    return SwitchableNorm2d(num_channels, momentum, eps)


def _frozen_batch(num_channels: int, eps: float = 1e-5) -> nn.Module:
    # torchvision's layer, as detection codebases use it: BN with statistics and affine as fixed
    # buffers. From scratch it is a fixed scale; it is meant for model.init_from a BN run.
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_channels, eps)


def _layer(num_channels: int, eps: float = 1e-5, affine: bool = True, dims: int = 2) -> nn.Module:
    # One group over (C, H, W) per sample, with per-channel scale and shift as in conv LayerNorm.
    return nn.GroupNorm(1, num_channels, eps=eps, affine=affine)


def _batchrenorm(
    num_channels: int,
    momentum: float = 0.01,
    eps: float = 1e-5,
    affine: bool = True,
    r_max: float = 3.0,
    d_max: float = 5.0,
    hold_steps: int = 20,
    r_relax_steps: int = 160,
    d_relax_steps: int = 100,
    dims: int = 2,
) -> nn.Module:
    from segbench.nn.batchrenorm import BatchRenorm2d

    return BatchRenorm2d(num_channels, eps, momentum, affine, r_max, d_max, hold_steps, r_relax_steps, d_relax_steps)


def _layer_channels(num_channels: int, eps: float = 1e-6, affine: bool = True, dims: int = 2) -> nn.Module:
    # ConvNeXt's LayerNorm2d: each position over its channels (not ``layer``, which is over C, H, W).
    from segbench.nn.channel_norms import LayerNormChannels

    return LayerNormChannels(num_channels, eps, affine)


def _rms_channels(num_channels: int, eps: float = 1e-6, affine: bool = True, dims: int = 2) -> nn.Module:
    from segbench.nn.channel_norms import RMSNormChannels

    return RMSNormChannels(num_channels, eps, affine)


def _grn(num_channels: int, eps: float = 1e-6, dims: int = 2) -> nn.Module:
    from segbench.nn.channel_norms import GlobalResponseNorm

    return GlobalResponseNorm(num_channels, eps)


def _ghost_batch(
    num_channels: int,
    virtual_batch: int = 2,
    momentum: float = 0.1,
    eps: float = 1e-5,
    affine: bool = True,
    dims: int = 2,
) -> nn.Module:
    from segbench.nn.channel_norms import GhostBatchNorm

    if int(virtual_batch) < 1 or momentum is None:
        raise SegbenchError(f"norm.virtual_batch={virtual_batch} must be at least 1 and norm.momentum a number")
    return GhostBatchNorm(num_channels, int(virtual_batch), eps, float(momentum), affine)


def _adain(num_channels: int, style_dim: int = 64, eps: float = 1e-5, dims: int = 2) -> nn.Module:
    from segbench.nn.conditional import AdaIN

    return AdaIN(num_channels, style_dim=style_dim, eps=eps)


SPADE_INNER = ("batch", "syncbatch", "instance")


def _spade(
    num_channels: int,
    cond_channels: int = 1,
    inner: str = "batch",
    hidden: int = 128,
    kernel: int = 3,
    eps: float = 1e-5,
    dims: int = 2,
) -> nn.Module:
    from segbench.nn.conditional import SPADE

    if inner not in SPADE_INNER:
        raise invalid_choice("norm.inner", inner, SPADE_INNER)
    # The registry builds SPADE's parameter-free inner norm, so conditional.py needs no registry.
    inner_norm = build_norm(inner, num_channels, context={"dims": dims}, eps=eps, affine=False)
    return SPADE(num_channels, cond_channels, inner_norm, hidden=hidden, kernel=kernel, dims=dims)


# The names users type (configs, the command line, error messages); ``canonical_norm_name`` also
# accepts them in any case, with or without "_" and "-", and the aliases below.
NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "batch": _batch,
    "syncbatch": _syncbatch,
    "instance": _instance,
    "group": _group,
    "layer": _layer,
    "batchrenorm": _batchrenorm,
    "adain": _adain,
    "spade": _spade,
    "frn": _frn,
    "evonorm_b0": _evonorm_b0,
    "evonorm_s0": _evonorm_s0,
    "ws_group": _ws_group,
    "crossbatch": _crossbatch,
    "switchable": _switchable,
    "frozen_batch": _frozen_batch,
    "layer_channels": _layer_channels,
    "rms_channels": _rms_channels,
    "grn": _grn,
    "ghost_batch": _ghost_batch,
}

# The feature maps each norm has a form for: 2 (images, N C H W) and 3 (volumes, N C D H W).
# Cross-iteration BN, switchable norm and frozen BN are written for images only.
NORM_DIMS: dict[str, tuple[int, ...]] = {name: (2, 3) for name in NORMS} | {
    "crossbatch": (2,),
    "switchable": (2,),
    "frozen_batch": (2,),
}

ALIASES = {
    "identity": "none",
    "bn": "batch",
    "batchnorm": "batch",
    "syncbn": "syncbatch",
    "syncbatchnorm": "syncbatch",
    "in": "instance",
    "instancenorm": "instance",
    "gn": "group",
    "groupnorm": "group",
    "ln": "layer",
    "layernorm": "layer",
    "brn": "batchrenorm",
    "frntlu": "frn",
    "wsgn": "ws_group",
    "cbn": "crossbatch",
    "crossiterationbatch": "crossbatch",
    "sn": "switchable",
    "frozenbn": "frozen_batch",
    "layernorm2d": "layer_channels",
    "convnextlayernorm": "layer_channels",
    "rmsnorm": "rms_channels",
    "rmsnorm2d": "rms_channels",
    "globalresponsenorm": "grn",
    "ghostbn": "ghost_batch",
    "gbn": "ghost_batch",
}

CONDITIONAL_NORMS = frozenset({"adain", "spade"})
# Norm-activation layers: where the model would apply ReLU after the norm, they apply their own
# non-linearity instead (the slot hands them ``apply_act`` and the model an identity).
ACTIVATING_NORMS = frozenset({"frn", "evonorm_b0", "evonorm_s0"})

# Builder arguments the model derives (the count of conditioning channels, whether a ReLU follows,
# the conv in front); they come in through ``context`` and are never user options.
DERIVED_KEYS = frozenset({"cond_channels", "apply_act", "conv", "dims"})


def _squashed(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "")


def register_norm(name: str, builder: Callable[..., nn.Module], dims: tuple[int, ...] = (2,)) -> None:
    """Add a norm to the slot, so that ``norm=<name>`` builds it in every segbench model.

    Args:
        name: what users type (letters, digits and "_"); it may not shadow a built-in name or alias.
        builder: ``builder(num_channels, **options) -> nn.Module``; its keyword arguments with
            defaults are the norm's options (``norm.<option>=...`` on the command line). A builder
            for 3-D takes ``dims`` (2 or 3) and builds the form for it.
        dims: the feature maps it has a form for: (2,) images, (2, 3) images and volumes.

    Example::

        register_norm("pixel", lambda c, eps=1e-8: PixelNorm(eps))   # then: segbench.models.ResUNet(norm="pixel")
    """
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise SegbenchError(f"register_norm: name {name!r} must be letters, digits and '_'")
    key = _squashed(name)
    taken = {_squashed(n): n for n in NORMS} | {a: ALIASES[a] for a in ALIASES}
    if key in taken:
        raise SegbenchError(f"register_norm: {name!r} is taken (by norm={taken[key]}); choose another name")
    if not callable(builder):
        raise SegbenchError(f"register_norm: the builder of {name!r} is not callable")
    if not dims or not set(dims) <= {2, 3}:
        raise SegbenchError(f"register_norm: dims={dims!r}; give (2,), (3,) or (2, 3)")
    NORMS[name] = builder
    NORM_DIMS[name] = tuple(dims)


def has_3d_form(name: str) -> bool:
    """Whether norm ``name`` works on volumes (declared in ``NORM_DIMS``)."""
    return 3 in NORM_DIMS[canonical_norm_name(name)]


def check_dims(name: str, dims: int) -> None:
    """Refuse, in one line, a norm without a form for ``dims``-D feature maps."""
    key = canonical_norm_name(name)
    if dims not in NORM_DIMS[key]:
        fitting = ", ".join(k for k in NORMS if dims in NORM_DIMS[k])
        raise SegbenchError(f"norm={key} has no {dims}-D form in segbench; for {dims}-D models use one of: {fitting}")


def canonical_norm_name(name: str) -> str:
    """``"Group_Norm"`` -> ``"group"``, ``"evonormb0"`` -> ``"evonorm_b0"``; unknown names raise with the full list."""
    key = _squashed(name)
    if key in ALIASES:
        return ALIASES[key]
    for registered in NORMS:
        if _squashed(registered) == key:
            return registered
    raise invalid_choice("norm", name, NORMS)


def norm_options(name: str) -> dict[str, object]:
    """The options a norm takes, with their defaults (keys the model derives excluded)."""
    params = inspect.signature(NORMS[canonical_norm_name(name)]).parameters
    return {k: p.default for k, p in list(params.items())[1:] if k not in DERIVED_KEYS}


def build_norm(name: str, num_channels: int, *, context: dict | None = None, **options) -> nn.Module:
    """Build norm ``name`` for ``num_channels`` channels.

    Args:
        name: a registered name or alias (see ``NORMS``).
        num_channels: channels of the feature map it normalizes.
        context: what the model knows and conditional norms need (``cond_channels``,
            ``style_dim``); ignored by norms that do not take it.
        **options: the norm's own options; an unknown one raises ``SegbenchError``.
    """
    key = canonical_norm_name(name)
    valid = norm_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        choices = ", ".join(valid) or "(none)"
        raise SegbenchError(f"norm '{key}' takes no option {unknown[0]!r}; its options: {choices}")
    builder = NORMS[key]
    accepted = inspect.signature(builder).parameters
    check_dims(key, (context or {}).get("dims", 2))
    extra = {k: v for k, v in (context or {}).items() if k in accepted and k not in options}
    return builder(num_channels, **options, **extra)
