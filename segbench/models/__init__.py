"""Model registry: every model takes ``in_channels``, an output count and the norm slot's arguments."""

from __future__ import annotations

from torch import nn

from segbench.errors import invalid_choice
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


MODELS = {"resunet": _resunet, "resunet3d": _resunet3d, "fcn8s": _fcn(8), "fcn16s": _fcn(16), "fcn32s": _fcn(32),
          "monai_unet": _monai_unet, "dynunet": _external("dynunet"), "segresnet": _external("segresnet"),
          "torchvision_seg": _external("torchvision_seg"), "smp_unet": _external("smp_unet")}


def build_model(name: str, in_channels: int, num_outputs: int, **kw) -> nn.Module:
    """Build a registered model; ``kw`` holds its own options and the norm slot's."""
    if name not in MODELS:
        raise invalid_choice("model", name, MODELS)
    return MODELS[name](in_channels, num_outputs, **kw)


__all__ = ["MODELS", "build_model", "ResUNet", "FCN", "fcn8s", "fcn16s", "fcn32s"]
