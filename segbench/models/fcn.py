"""FCN-32s/16s/8s on VGG16 (Long, Shelhamer & Darrell, arXiv 1411.4038), faithful to the Caffe nets.

``conv1_1`` pads by 100 so that any input survives the five pools and the 7x7 ``fc6``; the crops
(5 and 9 for the skips, 31/27/19 for the final 8x/16x/32x output) undo that padding exactly, so
the output has the input's height and width for every size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from segbench.errors import SegbenchError, invalid_choice
from segbench.io import load_torch
from segbench.nn.slot import NormSlot, apply_norm

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# (upsampling kernel, stride, final crop) per variant, from the reference prototxts.
FINAL_UPSAMPLE = {32: (64, 32, 19), 16: (32, 16, 27), 8: (16, 8, 31)}


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """(C, C, k, k) weights that make a transposed conv upsample each channel bilinearly."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    filt_1d = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = filt_1d[:, None] * filt_1d[None, :]
    return weight


def _upsampler(channels: int, kernel: int, stride: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, kernel, stride, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, kernel))
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2:]
    return x[..., offset : offset + h, offset : offset + w]


class ConvNormReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, padding: int, slot: NormSlot):
        super().__init__()
        # VGG keeps its conv biases even with BN (torchvision's vgg16_bn does), so weights load.
        self.conv = slot.conv(cin, cout, kernel, padding=padding, bias=True)
        self.norm = slot(cout, act=True)
        self.act = slot.activation()

    def forward(self, x, cond=None):
        return self.act(apply_norm(self.norm, self.conv(x), cond))


CONV1_PAD = 100  # the reference nets pad the input by 100 so any image size gives a valid score map


class FCN(nn.Module):
    """FCN-``variant``s for ``num_classes`` classes.

    Args:
        num_classes: output classes (21 for PASCAL VOC).
        variant: 32, 16 or 8: the finest pool whose scores are fused.
        in_channels: image channels.
        width: multiplies every channel count (1 is the original; 1/8 trains on a CPU).
        norm, norm_options, cond_channels: the norm slot, after every backbone conv (as vgg16_bn).
        dropout: after fc6 and fc7.
        skip_scale: scale pool4/pool3 features by 0.01/0.0001 before scoring (the "at once" net).
        backbone_weights: local path to torchvision's VGG16 or VGG16-BN ImageNet state dict.
        init: "default" (torch's conv init, as the reference code) or "he" (Kaiming-normal backbone
            and fc6/fc7, zero biases) for training from scratch: torch's default init shrinks the
            activations' std from 1 to about 0.01 by pool5 in a 13-conv plain net, which would
            handicap the no-BN arm of a BN comparison for a reason that is not the norm.
        learn_final_upsample: the paper fixes the final upsampling to bilinear interpolation
            (only the intermediate ones learn); true lets it learn too.
    """

    def __init__(
        self,
        num_classes: int = 21,
        variant: int = 8,
        in_channels: int = 3,
        width: float = 1.0,
        norm: str | Callable[[int], nn.Module] = "none",
        norm_options: dict | None = None,
        cond_channels: list[int] | None = None,
        dropout: float = 0.5,
        skip_scale: bool = False,
        backbone_weights: str | None = None,
        init: str = "default",
        learn_final_upsample: bool = False,
    ):
        super().__init__()
        if variant not in FINAL_UPSAMPLE:
            raise invalid_choice("model.variant", variant, FINAL_UPSAMPLE)
        if init not in ("default", "he"):
            raise invalid_choice("model.init", init, ["default", "he"])
        slot = NormSlot(norm, norm_options, in_channels, cond_channels)
        self.variant, self.skip_scale = variant, skip_scale
        self.conditioner = slot.conditioner()
        scale = lambda c: max(1, int(round(c * width)))  # noqa: E731
        self.stages = nn.ModuleList()
        cin = in_channels
        for i, stage in enumerate(VGG16_STAGES):
            layers = []
            for j, c in enumerate(stage):
                layers.append(ConvNormReLU(cin, scale(c), 3, CONV1_PAD if (i, j) == (0, 0) else 1, slot))
                cin = scale(c)
            self.stages.append(nn.ModuleList(layers))
        fc = scale(4096)
        self.fc6 = nn.Conv2d(cin, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        kernel, stride, self.final_crop = FINAL_UPSAMPLE[variant]
        if variant <= 16:
            self.score_pool4 = nn.Conv2d(scale(512), num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 4, 2)
        if variant == 8:
            self.score_pool3 = nn.Conv2d(scale(256), num_classes, 1)
            self.upscore_pool4 = _upsampler(num_classes, 4, 2)
        self.upscore_final = _upsampler(num_classes, kernel, stride)
        self.upscore_final.weight.requires_grad_(learn_final_upsample)
        if init == "he":
            self._he_init()
        self._zero_init_scores()
        if backbone_weights:
            load_vgg16_backbone(self, backbone_weights)

    def _he_init(self) -> None:
        convs = [layer.conv for stage in self.stages for layer in stage] + [self.fc6, self.fc7]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def _zero_init_scores(self) -> None:
        # The reference nets start every scoring layer at zero, so training starts from the
        # backbone's features rather than from random class scores.
        for name in ("score_fr", "score_pool4", "score_pool3"):
            layer = getattr(self, name, None)
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # conv1_1 pads by 100 and its 3x3 kernel takes 1 back: stage-1 features span the image plus
        # 99 pixels each side, so the conditioning map is padded the same way to stay aligned.
        cond = self.conditioner(image, pad=CONV1_PAD - 1) if self.conditioner is not None else None
        x, pools = image, []
        for stage in self.stages:
            for layer in stage:
                x = layer(x, cond)
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            pools.append(x)  # pool1 .. pool5
        x = self.drop(F.relu(self.fc6(x), inplace=True))
        x = self.drop(F.relu(self.fc7(x), inplace=True))
        score = self.score_fr(x)
        if self.variant <= 16:
            up = self.upscore2(score)
            pool4 = pools[3] * 0.01 if self.skip_scale else pools[3]
            score = up + _crop(self.score_pool4(pool4), 5, up)
        if self.variant == 8:
            up = self.upscore_pool4(score)
            pool3 = pools[2] * 0.0001 if self.skip_scale else pools[2]
            score = up + _crop(self.score_pool3(pool3), 9, up)
        return _crop(self.upscore_final(score), self.final_crop, image)  # (N, classes, H, W)


def fcn8s(**kw) -> FCN:
    return FCN(variant=8, **kw)


def fcn16s(**kw) -> FCN:
    return FCN(variant=16, **kw)


def fcn32s(**kw) -> FCN:
    return FCN(variant=32, **kw)


def load_vgg16_backbone(model: FCN, path: str) -> None:
    """Copy torchvision VGG16(-BN) ImageNet weights into the backbone, fc6 and fc7.

    Convs are matched in order, so both ``vgg16`` and ``vgg16_bn`` files load; BN parameters go
    into the model's norms when those are batch norms. Nothing is ever downloaded.
    """
    file = Path(path)
    if not file.is_file():
        raise SegbenchError(
            f"model.backbone_weights={path!r}: no such file; download torchvision's "
            "vgg16 (or vgg16_bn) ImageNet weights elsewhere and pass the local path"
        )
    from torchvision.ops import FrozenBatchNorm2d

    state = load_torch(file)
    if not isinstance(state, dict):
        raise SegbenchError(f"{path} holds a {type(state).__name__}, not a state dict of VGG16 weights")
    convs = [
        k[: -len(".weight")]
        for k, v in state.items()
        if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4
    ]
    bns = [k[: -len(".running_mean")] for k in state if k.startswith("features.") and k.endswith(".running_mean")]
    layers = [layer for stage in model.stages for layer in stage]
    if len(convs) != len(layers):
        raise SegbenchError(f"{path} holds {len(convs)} backbone convs, VGG16 has {len(layers)}")
    try:
        with torch.no_grad():
            for layer, key in zip(layers, convs):
                layer.conv.weight.copy_(state[f"{key}.weight"])
                layer.conv.bias.copy_(state[f"{key}.bias"])
            if bns and isinstance(layers[0].norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                for layer, key in zip(layers, bns):
                    layer.norm.load_state_dict({k: state[f"{key}.{k}"] for k in layer.norm.state_dict()})
            model.fc6.weight.copy_(state["classifier.0.weight"].view_as(model.fc6.weight))
            model.fc6.bias.copy_(state["classifier.0.bias"])
            model.fc7.weight.copy_(state["classifier.3.weight"].view_as(model.fc7.weight))
            model.fc7.bias.copy_(state["classifier.3.bias"])
    except (RuntimeError, KeyError) as err:
        raise SegbenchError(
            f"{path} does not fit this FCN (VGG16 weights need model.width=1 and "
            f"3 input channels): {str(err).splitlines()[0]}"
        ) from None
