"""Model registry: every model takes ``in_channels``, an output count and the norm slot's arguments."""

from __future__ import annotations

from torch import nn

from segbench.errors import SegbenchError, invalid_choice
from segbench.models.fcn import FCN, fcn8s, fcn16s, fcn32s
from segbench.models.resunet import ResUNet


def _resunet(in_channels: int, num_outputs: int, **kw) -> nn.Module:
    return ResUNet(in_channels=in_channels, out_channels=num_outputs, **kw)


def _resunet3d(in_channels: int, num_outputs: int, **kw) -> nn.Module:
    return ResUNet(in_channels=in_channels, out_channels=num_outputs, dims=3, **kw)


def _fcn(variant: int):
    def build(in_channels: int, num_outputs: int, **kw) -> nn.Module:
        return FCN(num_classes=num_outputs, variant=variant, in_channels=in_channels, **kw)

    return build


def _monai_unet(in_channels: int, num_outputs: int, **kw) -> nn.Module:
    from segbench.models.monai_unet import monai_unet  # MONAI is optional: imported only when asked for

    return monai_unet(in_channels, num_outputs, **kw)


def _external(builder: str):
    def build(in_channels: int, num_outputs: int, **kw) -> nn.Module:
        from segbench.models import external  # MONAI and torchvision's nets: imported only when asked for

        return getattr(external, builder)(in_channels, num_outputs, **kw)

    return build


MODELS = {
    "resunet": _resunet,
    "resunet3d": _resunet3d,
    "fcn8s": _fcn(8),
    "fcn16s": _fcn(16),
    "fcn32s": _fcn(32),
    "monai_unet": _monai_unet,
    "dynunet": _external("dynunet"),
    "segresnet": _external("segresnet"),
    "torchvision_seg": _external("torchvision_seg"),
    "smp_unet": _external("smp_unet"),
}
BUILT_IN = frozenset(MODELS)


def register_model(name: str, builder, dims: int = 2) -> None:
    """Make a user's own network a segbench model (Python API; ``model=custom model.name=<name>``).

    ``builder(in_channels, num_outputs, **options)`` returns any ``nn.Module``; its norm layers are
    then replaced by the run's ``norm=`` (``segbench.nn.swap.swap_norms``), and ``model.*`` keys
    other than ``name`` reach the builder as ``options``.
    """

    def build(
        in_channels: int,
        num_outputs: int,
        norm: str = "batch",
        norm_options: dict | None = None,
        cond_channels=None,
        **options,
    ) -> nn.Module:
        from segbench.models.external import Wrapped, with_norm

        net = builder(in_channels, num_outputs, **options)
        return with_norm(Wrapped(net, dims, 1, name), norm, norm_options, cond_channels)

    if name in BUILT_IN:
        raise SegbenchError(f"register_model: {name!r} is a built-in model; choose another name")
    MODELS[name] = build


def build_model(name: str, in_channels: int, num_outputs: int, **kw) -> nn.Module:
    """Build a registered model; ``kw`` holds its own options and the norm slot's."""
    if name == "custom":
        raise SegbenchError(
            "model=custom needs model.name=<a name given to segbench.models.register_model>; "
            f"registered: {', '.join(sorted(set(MODELS) - BUILT_IN)) or 'none'}"
        )
    if name not in MODELS:
        raise invalid_choice("model", name, MODELS)
    return MODELS[name](in_channels, num_outputs, **kw)


__all__ = ["MODELS", "build_model", "register_model", "ResUNet", "FCN", "fcn8s", "fcn16s", "fcn32s"]
