"""Residual fully convolutional U-Net: the network of the first question in shared/context."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from segbench.errors import SegbenchError
from segbench.nn.slot import NormSlot, apply_norm


class ResBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus a (projected) shortcut, then ReLU (3x3x3 in 3-D).

    ``inner_act=False`` drops the ReLU between the two convs (conv -> norm -> conv): the wiring of
    the first question's posted code, which feeds ``Z10``, the norm's output, to the next conv and
    never uses ``A10 = relu(Z10)``.
    """

    def __init__(self, cin: int, cout: int, stride: int, slot: NormSlot, inner_act: bool = True):
        super().__init__()
        self.conv1 = slot.conv(cin, cout, 3, stride, 1)
        self.norm1 = slot(cout, act=inner_act)
        self.act1 = slot.activation() if inner_act else nn.Identity()
        self.conv2 = slot.conv(cout, cout, 3, 1, 1)
        self.norm2 = slot(cout)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = slot.conv(cin, cout, 1, stride)
            self.project_norm = slot(cout)

    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        y = self.act1(apply_norm(self.norm1, self.conv1(x), cond))
        y = apply_norm(self.norm2, self.conv2(y), cond)
        skip = x if self.project is None else apply_norm(self.project_norm, self.project(x), cond)
        return F.relu(y + skip)


class ResUNet(nn.Module):
    """Residual U-Net: strided-conv downsampling, transposed-conv upsampling, concatenated skips.

    Args:
        in_channels: input channels (one per MR modality).
        out_channels: output logits (1 for a whole-tumour mask, 3 for WT/TC/ET).
        width: channels at full resolution; doubled at each level down.
        depth: resolution levels; inputs must be divisible by ``2 ** (depth - 1)``.
        norm: norm name (see ``segbench.nn.NORMS``) or a callable ``f(channels) -> nn.Module``.
        norm_options: the norm's options, e.g. ``{"num_groups": 4}``.
        cond_channels: input channels that condition AdaIN/SPADE (None: all of them).
        dims: 2 for slices (N, C, H, W), 3 for volumes (N, C, D, H, W): the same blocks, convs and
            norm slot in 3-D (``model=resunet3d``).
        inner_act: the ReLU between each block's two convs; False gives the first question's
            conv -> norm -> conv wiring (see ``ResBlock``).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 1,
        width: int = 16,
        depth: int = 4,
        norm: str | Callable[[int], nn.Module] = "batch",
        norm_options: dict | None = None,
        cond_channels: list[int] | None = None,
        dims: int = 2,
        inner_act: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise SegbenchError(f"model.depth={depth} must be at least 1")
        if dims not in (2, 3):
            raise SegbenchError(f"model.dims={dims} must be 2 (slices) or 3 (volumes)")
        slot = NormSlot(norm, norm_options, in_channels, cond_channels, dims=dims)
        self.depth, self.dims = depth, dims
        up, head = (nn.ConvTranspose3d, nn.Conv3d) if dims == 3 else (nn.ConvTranspose2d, nn.Conv2d)
        self.conditioner = slot.conditioner()
        widths = [width * 2**i for i in range(depth)]
        self.stem = ResBlock(in_channels, widths[0], 1, slot, inner_act)
        self.down = nn.ModuleList(ResBlock(widths[i - 1], widths[i], 2, slot, inner_act) for i in range(1, depth))
        self.up = nn.ModuleList(up(widths[i], widths[i - 1], 2, stride=2) for i in range(depth - 1, 0, -1))
        self.decode = nn.ModuleList(
            ResBlock(2 * widths[i - 1], widths[i - 1], 1, slot, inner_act) for i in range(depth - 1, 0, -1)
        )
        self.head = head(widths[0], out_channels, 1)

    def check_input_size(self, *sides: int) -> None:
        factor = 2 ** (self.depth - 1)
        if any(side % factor for side in sides):
            raise SegbenchError(
                f"input size {'x'.join(map(str, sides))} is not divisible by {factor}, which a "
                f"ResUNet of depth {self.depth} needs; crop or pad to a multiple of {factor}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(*x.shape[2:])
        cond = self.conditioner(x) if self.conditioner is not None else None
        skips = [self.stem(x, cond)]  # (N, w, H, W)
        for block in self.down:
            skips.append(block(skips[-1], cond))  # (N, 2^i w, H / 2^i, W / 2^i)
        y = skips.pop()
        for up, block in zip(self.up, self.decode):
            y = block(torch.cat([up(y), skips.pop()], dim=1), cond)
        return self.head(y)  # (N, out_channels, H, W)
