"""Networks users already have, trained by segbench's loop with the norm slot swapped in.

``model=dynunet`` (MONAI's ``DynUNet`` in nnU-Net's configuration: 3x3 kernels, a stride-1 first
stage then stride 2, instance norm by default in nnU-Net), ``model=segresnet`` (MONAI's
``SegResNet``, group norm by default) and ``model=torchvision_seg`` (torchvision's
``fcn_resnet50`` / ``deeplabv3_resnet50``, batch norm by default) and ``model=smp_unet``
(segmentation_models_pytorch's ``Unet`` on a timm encoder). Each is built as its library
builds it, then every norm layer is replaced by ``norm=`` through ``segbench.nn.swap.swap_norms``,
so the same ``norm=batch,group,instance`` sweep runs on them as on the ResUNet. No weights are
downloaded: torchvision's and smp's take an optional local file (``model.weights``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from segbench.errors import SegbenchError, invalid_choice
from segbench.nn.swap import swap_norms

log = logging.getLogger(__name__)
TORCHVISION_ARCHS = ("fcn_resnet50", "deeplabv3_resnet50")


class Wrapped(nn.Module):
    """A library's network seen as a segbench model: logits out (a dict's ``"out"``), the input
    sizes it can take checked before training, and what the norm swap did."""

    def __init__(self, net: nn.Module, dims: int, factor: int, name: str):
        super().__init__()
        self.net, self.dims, self.factor, self.name = net, dims, factor, name
        self.norm_report: dict[str, int] = {}

    def check_input_size(self, *sides: int) -> None:
        if any(side % self.factor for side in sides):
            shown = "x".join(map(str, sides))
            raise SegbenchError(
                f"input size {shown} is not divisible by {self.factor}, which model={self.name} "
                f"needs; crop or pad to a multiple of {self.factor}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out["out"] if isinstance(out, dict) else out


def with_norm(model: Wrapped, norm: str, norm_options: dict | None, cond_channels) -> Wrapped:
    """``model`` with every norm layer of its network swapped for ``norm`` (what each builder here ends with)."""
    if cond_channels is not None:
        raise SegbenchError(f"norm.cond_channels does not apply to model={model.name}")
    model.norm_report = dict(swap_norms(model.net, norm, norm_options, dims=model.dims))
    log.info(
        "model=%s: norm layers swapped: %s", model.name, ", ".join(f"{n} {k}" for k, n in model.norm_report.items())
    )
    return model


def _load_local(net: nn.Module, weights: str | None, what: str) -> None:
    """Load a local state dict into ``net``: every tensor whose name and shape fit (a 21-class head is skipped)."""
    if weights is None:
        return
    if not Path(weights).is_file():
        raise SegbenchError(
            f"model.weights={weights!r} is not a file; segbench downloads nothing: save a state "
            f"dict of {what} there, or leave model.weights=null to start from random weights"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = net.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise SegbenchError(f"model.weights={weights!r}: none of its tensors fits {what}")
    net.load_state_dict(kept, strict=False)
    log.info("model.weights: %d of %d tensors loaded from %s", len(kept), len(own), weights)


def _monai(name: str):
    try:
        from monai.networks import nets
    except ImportError:
        raise SegbenchError(f"model={name} needs MONAI: pip install 'segbench[bench]' (or pip install monai)") from None
    return nets


def dynunet(
    in_channels: int,
    num_outputs: int,
    norm: str = "instance",
    norm_options: dict | None = None,
    cond_channels=None,
    dims: int = 2,
    kernel_size=(3, 3, 3, 3, 3),
    strides=(1, 2, 2, 2, 2),
    filters=None,
    res_block: bool = False,
) -> nn.Module:
    """MONAI ``DynUNet`` as nnU-Net configures it (``filters`` None: 32, 64, ... capped at 320)."""
    nets = _monai("dynunet")
    if len(kernel_size) != len(strides):
        raise SegbenchError(
            f"model.kernel_size={list(kernel_size)} and model.strides={list(strides)} must have one entry per stage"
        )
    factor = 1
    for s in strides:
        factor *= int(s)
    net = nets.DynUNet(
        dims,
        in_channels,
        num_outputs,
        kernel_size=list(kernel_size),
        strides=list(strides),
        upsample_kernel_size=list(strides)[1:],
        filters=None if filters is None else list(filters),
        norm_name=("instance", {"affine": True}),
        res_block=bool(res_block),
    )
    return with_norm(Wrapped(net, dims, factor, "dynunet"), norm, norm_options, cond_channels)


def segresnet(
    in_channels: int,
    num_outputs: int,
    norm: str = "group",
    norm_options: dict | None = None,
    cond_channels=None,
    dims: int = 2,
    init_filters: int = 8,
    blocks_down=(1, 2, 2, 4),
) -> nn.Module:
    """MONAI ``SegResNet`` (Myronenko's BraTS 2018 winner without the VAE branch)."""
    nets = _monai("segresnet")
    net = nets.SegResNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=num_outputs,
        init_filters=int(init_filters),
        blocks_down=tuple(blocks_down),
    )
    return with_norm(Wrapped(net, dims, 2 ** (len(blocks_down) - 1), "segresnet"), norm, norm_options, cond_channels)


def torchvision_seg(
    in_channels: int,
    num_outputs: int,
    norm: str = "batch",
    norm_options: dict | None = None,
    cond_channels=None,
    arch: str = "deeplabv3_resnet50",
    weights: str | None = None,
) -> nn.Module:
    """torchvision's ``fcn_resnet50`` or ``deeplabv3_resnet50``, from random weights or a local file."""
    from torchvision.models import segmentation

    if arch not in TORCHVISION_ARCHS:
        raise invalid_choice("model.arch", arch, TORCHVISION_ARCHS)
    net = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=num_outputs, aux_loss=False)
    _load_local(net, weights, f"torchvision's {arch}")
    if in_channels != 3:  # an MRI's 4 modalities: a first conv of the right width, the others as they are
        old = net.backbone.conv1
        net.backbone.conv1 = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
    return with_norm(Wrapped(net, 2, 8, "torchvision_seg"), norm, norm_options, cond_channels)


def smp_unet(
    in_channels: int,
    num_outputs: int,
    norm: str = "batch",
    norm_options: dict | None = None,
    cond_channels=None,
    encoder: str = "tu-resnet18",
    encoder_depth: int = 4,
    decoder_channels=(128, 64, 32, 16),
    weights: str | None = None,
) -> nn.Module:
    """segmentation_models_pytorch's ``Unet`` on an encoder (``tu-<name>``: any timm model), random
    weights or a local state dict (``model.weights``); nothing is downloaded."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise SegbenchError(
            "model=smp_unet needs segmentation_models_pytorch: pip install 'segbench[models]'"
        ) from None
    if len(decoder_channels) != int(encoder_depth):
        raise SegbenchError(
            f"model.decoder_channels={list(decoder_channels)} needs one entry per encoder stage "
            f"(model.encoder_depth={encoder_depth})"
        )
    try:
        net = smp.Unet(
            encoder_name=encoder,
            encoder_weights=None,
            encoder_depth=int(encoder_depth),
            decoder_channels=tuple(decoder_channels),
            in_channels=in_channels,
            classes=num_outputs,
        )
    except (KeyError, ValueError, RuntimeError) as err:  # an unknown encoder name
        raise SegbenchError(
            f"model.encoder={encoder!r}: {str(err).splitlines()[0] if str(err) else 'unknown'}"
        ) from None
    _load_local(net, weights, f"smp Unet({encoder})")
    return with_norm(Wrapped(net, 2, 2 ** int(encoder_depth), "smp_unet"), norm, norm_options, cond_channels)
