"""ConvNeXt LayerNorm2d, RMSNorm over channels, GRN and Ghost BN against their formulas and timm."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from segbench.nn import build_norm

timm_layers = pytest.importorskip("timm.layers")


def _x(dims: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn((4, 6) + (5, 7, 3)[:dims], dtype=torch.float64) * 3 + 1


def _randomize(module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("dims", [2, 3])
def test_layer_channels_is_each_pixel_over_its_channels(dims):
    x = _x(dims)
    norm = build_norm("layer_channels", 6, context={"dims": dims}).double()
    _randomize(norm)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    shape = (1, -1) + (1,) * dims
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(shape) + norm.bias.view(shape)
    torch.testing.assert_close(norm(x), expected)
    # ... and not norm=layer, which is one set of statistics over (C, H, W).
    assert not torch.allclose(norm(x), build_norm("layer", 6).double()(x))


def test_layer_channels_matches_timm_layernorm2d():
    x = _x(2).float()
    ours, theirs = build_norm("layer_channels", 6), timm_layers.LayerNorm2d(6, eps=1e-6)
    _randomize(ours)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_rms_channels_formula_and_timm(dims):
    x = _x(dims)
    norm = build_norm("rms_channels", 6, context={"dims": dims}).double()
    _randomize(norm)
    expected = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * norm.weight.view((1, -1) + (1,) * dims)
    torch.testing.assert_close(norm(x), expected)
    if dims == 2:
        theirs = timm_layers.RmsNorm2d(6, eps=1e-6).double()
        theirs.load_state_dict(norm.state_dict())
        torch.testing.assert_close(norm(x), theirs(x))


@pytest.mark.parametrize("dims", [2, 3])
def test_grn_formula_identity_at_init_and_timm(dims):
    from timm.layers.grn import GlobalResponseNorm

    x = _x(dims)
    norm = build_norm("grn", 6, context={"dims": dims}).double()
    torch.testing.assert_close(norm(x), x)  # gamma = beta = 0: the identity until it learns
    _randomize(norm)
    g = x.flatten(2).norm(dim=2)[(...,) + (None,) * dims]
    n = g / (g.mean(1, keepdim=True) + 1e-6)
    shape = (1, -1) + (1,) * dims
    torch.testing.assert_close(norm(x), x + norm.weight.view(shape) * (x * n) + norm.bias.view(shape))
    if dims == 2:
        theirs = GlobalResponseNorm(6, eps=1e-6, channels_last=False).double()
        theirs.load_state_dict(norm.state_dict())
        torch.testing.assert_close(norm(x), theirs(x))


def test_ghost_batch_normalizes_each_virtual_batch_and_updates_the_statistics_per_chunk():
    x = _x(2)
    ghost = build_norm("ghost_batch", 6, virtual_batch=2).double()
    _randomize(ghost)
    ghost.train()
    out = ghost(x)
    mean, var = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    for k, chunk in enumerate(x.split(2)):
        m, v = chunk.mean((0, 2, 3)), chunk.var((0, 2, 3), unbiased=False)
        expected = (chunk - m[:, None, None]) / torch.sqrt(v[:, None, None] + 1e-5)
        expected = expected * ghost.weight[:, None, None] + ghost.bias[:, None, None]
        torch.testing.assert_close(out[2 * k : 2 * k + 2], expected)
        n = chunk.numel() / 6
        mean, var = 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v * n / (n - 1)
    torch.testing.assert_close(ghost.running_mean, mean)
    torch.testing.assert_close(ghost.running_var, var)
    ghost.eval()
    torch.testing.assert_close(ghost(x), F.batch_norm(x, mean, var, ghost.weight, ghost.bias, False, 0.0, 1e-5))


def test_ghost_batch_with_the_whole_batch_as_one_chunk_is_batch_norm():
    x = _x(3)
    ghost, bn = (
        build_norm("ghost_batch", 6, virtual_batch=4, context={"dims": 3}).double(),
        build_norm("batch", 6).double(),
    )
    torch.testing.assert_close(ghost(x), bn(x))
    torch.testing.assert_close(ghost.running_var, bn.running_var)


def test_instance_without_affine_preset_has_no_parameters():
    from pathlib import Path

    from omegaconf import OmegaConf

    preset = OmegaConf.load(Path(__file__).parents[1] / "segbench" / "configs" / "norm" / "instance_noaffine.yaml")
    options = {k: v for k, v in preset.items() if k != "name"}
    assert preset.name == "instance" and not list(build_norm(preset.name, 6, **options).parameters())
