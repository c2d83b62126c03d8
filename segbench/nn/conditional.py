"""Conditional normalization: AdaIN and SPADE, and where their condition comes from.

In a segmentation network the labels are the *output*, so neither SPADE's semantic layout nor
AdaIN's style image exists as such. segbench conditions on the network's input image (all
channels, or the ones named by ``cond_channels``): SPADE receives that map resized to each
feature map; AdaIN receives a style code computed once per forward by a small learned encoder.
``Condition`` carries both through the model and caches each resized map, so the per-layer path
does only the layer's own convolutions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CONVS = {2: nn.Conv2d, 3: nn.Conv3d}


class Condition:
    """The conditioning input of one forward pass.

    Args:
        image: (N, K, H, W) conditioning map (the chosen input channels).
        style: (N, E) style code from the style encoder, or None.
        pad: zero padding that puts the map where the model's feature maps see the input. A model
            that pads its input (FCN's conv1_1 pads by 100) passes how far its first feature map
            extends beyond the image, so a feature pixel and its map pixel show the same place.
    """

    def __init__(self, image: torch.Tensor, style: torch.Tensor | None = None, pad: int = 0):
        self.image, self.style = image, style
        self.base = F.pad(image, (pad,) * 2 * (image.dim() - 2)) if pad else image  # (N, K, H + 2 pad, W + 2 pad)
        self._resized: dict[tuple[int, ...], torch.Tensor] = {}

    def image_at(self, size: tuple[int, ...]) -> torch.Tensor:
        """The (padded) map at a feature map's (H, W) or (D, H, W), computed once per size.

        Area-averaged when the feature map is smaller (what a pooled feature pixel covers),
        (bi/tri)linear when it is larger.
        """
        size = tuple(int(s) for s in size)
        if size == tuple(self.base.shape[2:]):
            return self.base
        if size not in self._resized:
            larger = "bilinear" if len(size) == 2 else "trilinear"
            mode = "area" if size[0] <= self.base.shape[2] else larger
            self._resized[size] = F.interpolate(self.base, size=size, mode=mode)
        return self._resized[size]


def adain(x: torch.Tensor, mu_s: torch.Tensor, sigma_s: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN(x) = sigma_s * (x - mu(x)) / sigma(x) + mu_s, statistics per sample and channel.

    Args:
        x: (N, C, H, W) or (N, C, D, H, W) features.
        mu_s, sigma_s: (N, C) target mean and standard deviation.
    """
    spatial = tuple(range(2, x.dim()))
    mu = x.mean(spatial, keepdim=True)
    sigma = torch.sqrt(x.var(spatial, unbiased=False, keepdim=True) + eps)
    expand = (...,) + (None,) * len(spatial)
    return sigma_s[expand] * (x - mu) / sigma + mu_s[expand]


class AdaIN(nn.Module):
    """Adaptive instance norm (Huang & Belongie 2017) with (mu_s, sigma_s) predicted from a style code.

    A linear map turns the (N, E) style code into per-channel targets. It starts at zero, so the
    layer starts as a plain instance norm (sigma_s = 1, mu_s = 0) and learns to depart from it.
    """

    conditional = True

    def __init__(self, num_channels: int, style_dim: int = 64, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.to_stats = nn.Linear(style_dim, 2 * num_channels)
        nn.init.zeros_(self.to_stats.weight)
        nn.init.zeros_(self.to_stats.bias)

    def forward(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        if cond is None or cond.style is None:
            raise ValueError("AdaIN needs a Condition with a style code; build the model with norm='adain'")
        log_sigma, mu_s = self.to_stats(cond.style).chunk(2, dim=1)  # (N, C) each
        return adain(x, mu_s, torch.exp(log_sigma), self.eps)


class SPADE(nn.Module):
    """Spatially-adaptive normalization (Park et al. 2019, arXiv 1903.07291).

    ``x_hat * (1 + gamma(m)) + beta(m)`` where ``x_hat`` is a parameter-free norm of ``x`` and
    gamma, beta come from a shared conv + ReLU on the conditioning map ``m`` resized to ``x``.

    Args:
        num_channels: channels of x.
        cond_channels: channels of the conditioning map.
        inner: the parameter-free norm module (the registry builds batch, syncbatch or instance).
        hidden: width of the shared conv (128 in the paper).
        kernel: kernel size of all three convs (3 in the paper).
        dims: 2 for images, 3 for volumes (3-D convs on a 3-D conditioning map).
    """

    conditional = True

    def __init__(
        self, num_channels: int, cond_channels: int, inner: nn.Module, hidden: int = 128, kernel: int = 3, dims: int = 2
    ):
        super().__init__()
        self.inner = inner
        pad, conv = kernel // 2, CONVS[dims]
        self.shared = nn.Sequential(conv(cond_channels, hidden, kernel, padding=pad), nn.ReLU(inplace=True))
        self.gamma = conv(hidden, num_channels, kernel, padding=pad)
        self.beta = conv(hidden, num_channels, kernel, padding=pad)

    def forward(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        if cond is None:
            raise ValueError("SPADE needs a Condition; build the model with norm='spade'")
        x_hat = self.inner(x)
        hidden = self.shared(cond.image_at(x.shape[2:]))  # (N, hidden, [D,] H, W)
        return x_hat * (1 + self.gamma(hidden)) + self.beta(hidden)


class StyleEncoder(nn.Module):
    """Input image -> (N, style_dim) code: three strided convs and a global average pool."""

    def __init__(self, in_channels: int, style_dim: int = 64, width: int = 32, dims: int = 2):
        super().__init__()
        layers, c = [], in_channels
        for out in (width, width * 2, style_dim):
            layers += [CONVS[dims](c, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = out
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).flatten(2).mean(2)  # (N, style_dim)


class Conditioner(nn.Module):
    """Builds the ``Condition`` of a forward pass from the model's input.

    Args:
        cond_channels: indices of the input channels to condition on (None: all).
        style_dim: when set, also run a ``StyleEncoder`` (AdaIN needs it; SPADE does not).
        in_channels: channels of the model's input.
        dims: 2 for images, 3 for volumes.
    """

    def __init__(
        self, in_channels: int, cond_channels: list[int] | None = None, style_dim: int | None = None, dims: int = 2
    ):
        super().__init__()
        index = list(range(in_channels)) if cond_channels is None else [int(c) for c in cond_channels]
        bad = [c for c in index if not 0 <= c < in_channels]
        if bad:
            from segbench.errors import SegbenchError

            raise SegbenchError(
                f"norm.cond_channels={index} names channel {bad[0]}, but the input has "
                f"{in_channels} channels (valid: 0..{in_channels - 1})"
            )
        self.register_buffer("index", torch.tensor(index), persistent=False)
        self.all_channels = index == list(range(in_channels))
        self.style = StyleEncoder(len(index), style_dim, dims=dims) if style_dim else None

    @property
    def out_channels(self) -> int:
        return len(self.index)

    def forward(self, x: torch.Tensor, pad: int = 0) -> Condition:
        image = x if self.all_channels else x.index_select(1, self.index)
        return Condition(image, self.style(image) if self.style is not None else None, pad)
