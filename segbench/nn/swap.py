"""``swap_norms``: put any norm of the registry into a network that already exists.

The same idea as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` or detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm``: walk the module tree and replace each
normalization layer by one built for its channel count. A MONAI ``DynUNet``, a torchvision
``deeplabv3_resnet50`` or a user's own net then takes part in a norm study without being rewritten.

What is replaced: ``BatchNorm{1,2,3}d``, ``SyncBatchNorm``, ``InstanceNorm{1,2,3}d``, ``GroupNorm``
and channel LayerNorms written for feature maps (timm's and torchvision's ``LayerNorm2d``); timm's
norm-activation layers (``BatchNormAct2d``, ...) keep their activation after the new norm. A plain
``nn.LayerNorm`` normalizes a token's last dimensions, not a feature map's channels, and is left
as it is (counted in the report). Every tensor of the old layer whose name and shape the new one
shares (affine weight and bias, running statistics) is carried over, so swapping BN for BN
changes nothing and a GN swapped in starts from the BN's affine parameters.

What cannot be swapped in after the fact, refused in one line: weight-standardized GN and
cross-iteration BN, which change or read the conv in front of the norm (a module tree does not
say which conv feeds which norm), and the conditional norms (AdaIN, SPADE), which need the
model's input at every layer. Norm-activation layers (FRN, EvoNorm) are built without their own
activation, since the network keeps the one it already applies after each norm.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.nn.norms import ACTIVATING_NORMS, CONDITIONAL_NORMS, build_norm, canonical_norm_name, check_dims

# Norms that need the conv in front of them, or the model's input, and why.
NOT_SWAPPABLE = {
    "ws_group": "it standardizes the weights of the conv in front, and a module tree does not say which conv "
    "feeds which norm",
    "crossbatch": "it reads the weights of the conv in front, and a module tree does not say which conv feeds "
    "which norm",
    **{name: "it needs the model's input at every layer (a conditional norm)" for name in CONDITIONAL_NORMS},
}
_BY_DIMS = {
    nn.BatchNorm1d: 1,
    nn.BatchNorm2d: 2,
    nn.BatchNorm3d: 3,
    nn.InstanceNorm1d: 1,
    nn.InstanceNorm2d: 2,
    nn.InstanceNorm3d: 3,
}


def _channels_and_dims(layer: nn.Module, dims: int) -> tuple[int, int] | None:
    """The channel count a norm layer normalizes and its spatial dims; None when it is no feature-map norm."""
    for kind, d in _BY_DIMS.items():
        if isinstance(layer, kind):
            return layer.num_features, d
    if isinstance(layer, nn.SyncBatchNorm):
        return layer.num_features, dims
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels, dims
    if isinstance(layer, nn.LayerNorm) and type(layer).__name__.lower() in ("layernorm2d", "layernorm3d"):
        return int(layer.normalized_shape[0]), int(type(layer).__name__[-2])
    return None


def swap_norms(model: nn.Module, norm: str, options: dict | None = None, dims: int = 2) -> Counter:
    """Replace every normalization layer of ``model`` (in place) by ``norm`` with ``options``.

    Args:
        model: any ``nn.Module``.
        norm: a registered norm name or alias (``"group"``, ``"bn"``); ``"none"`` removes the norms.
        options: the norm's own options (``{"num_groups": 8}``).
        dims: spatial dims of the layers whose class does not say (``GroupNorm``, ``SyncBatchNorm``).

    Returns:
        What was done: ``Counter({"BatchNorm2d -> group": 53, "LayerNorm (kept)": 1})``.
    """
    name = canonical_norm_name(norm)
    if name in NOT_SWAPPABLE:
        raise SegbenchError(
            f"norm={name} cannot be swapped into an existing model: {NOT_SWAPPABLE[name]}; "
            "use it in model=resunet / resunet3d, whose norm slot builds the conv too"
        )
    options = dict(options or {})
    # Norm-activation layers lose their own activation: the network keeps the one it applies after each norm.
    derived = {"apply_act": False} if name in ACTIVATING_NORMS else {}
    report: Counter = Counter()
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            found = _channels_and_dims(child, dims)
            if found is None:
                if isinstance(child, nn.LayerNorm):
                    report["LayerNorm (kept: normalizes the last dims, not channels)"] += 1
                continue
            channels, d = found
            check_dims(name, d)
            try:
                new = build_norm(name, channels, context={"dims": d, **derived}, **options)
            except ValueError as err:  # e.g. 8 groups for a 12-channel layer
                raise SegbenchError(
                    f"norm={name} for {child_name} ({type(child).__name__}, {channels} channels): "
                    f"{str(err).splitlines()[0]}"
                ) from None
            _carry_over(child, new)
            if isinstance(getattr(child, "act", None), nn.Module):
                # timm's norm-activation layers (BatchNormAct2d, GroupNormAct): keep their dropout and activation.
                new = nn.Sequential(new, getattr(child, "drop", nn.Identity()), child.act)
            setattr(parent, child_name, new)
            report[f"{type(child).__name__} -> {name}"] += 1
    if not any("->" in k for k in report):
        raise SegbenchError(
            f"{type(model).__name__} has no normalization layer to swap (BatchNorm, SyncBatchNorm, "
            "InstanceNorm, GroupNorm, LayerNorm2d)"
        )
    return report


def _carry_over(old: nn.Module, new: nn.Module) -> None:
    """Copy every tensor the two layers share by name and shape; put the new one on the old one's device."""
    state = old.state_dict()
    own = new.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reference = next(iter(state.values()), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
    with torch.no_grad():
        new.load_state_dict(shared, strict=False)
    new.train(old.training)
