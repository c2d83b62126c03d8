"""Every model with every norm: shapes, gradients, checkpoints, eval determinism; FCN geometry."""

from __future__ import annotations

import io

import pytest
import torch

from segbench.errors import SegbenchError
from segbench.models import MODELS, build_model
from segbench.nn import NORMS, build_norm

# Tiny widths; SPADE's hidden width shrunk so FCN's padded 100-pixel border stays cheap.
MODEL_KW = {
    "resunet": {"width": 8, "depth": 3},
    "fcn8s": {"width": 0.125},
    "fcn16s": {"width": 0.125},
    "fcn32s": {"width": 0.125},
    "monai_unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
}
# MONAI's UNet: its own norms; 3-D: tests/test_3d.py; the library networks with swapped norms: tests/test_swap.py.
SLOT_MODELS = sorted(set(MODELS) - {"monai_unet", "resunet3d", "dynunet", "segresnet", "torchvision_seg", "smp_unet"})
NORM_KW = {"spade": {"hidden": 8}, "group": {"num_groups": 4}}
SIZE = {"resunet": (32, 40), "fcn8s": (37, 45), "fcn16s": (37, 45), "fcn32s": (37, 45), "monai_unet": (32, 40)}


def make(model, norm):
    torch.manual_seed(0)
    return build_model(model, 3, 2, norm=norm, norm_options=NORM_KW.get(norm), **MODEL_KW[model])


@pytest.mark.filterwarnings("ignore:norm=syncbatch outside")
@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("model", SLOT_MODELS)
def test_every_model_with_every_norm(model, norm):
    net = make(model, norm).train()
    x = torch.randn(2, 3, *SIZE[model])
    y = net(x)
    assert y.shape == (2, 2, *SIZE[model])
    (y - 1).square().mean().backward()  # not y**2: FCN starts at exactly zero output
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    net.eval()
    with torch.no_grad():
        first, second = net(x), net(x)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    clone = make(model, norm)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), first)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_monai_unet_takes_monais_norms_and_refuses_the_rest(norm):
    pytest.importorskip("monai")
    from segbench.models.monai_unet import MONAI_NORMS

    if norm not in MONAI_NORMS:
        with pytest.raises(SegbenchError, match=f"norm={norm} with model=monai_unet"):
            make("monai_unet", norm)
        return
    if norm == "group":  # MONAI also norms its last block, of num_outputs channels
        with pytest.raises(SegbenchError, match="num_groups"):
            make("monai_unet", norm)
        net = build_model("monai_unet", 3, 2, norm=norm, norm_options={"num_groups": 2}, **MODEL_KW["monai_unet"])
    else:
        net = make("monai_unet", norm)
    net.train()
    y = net(torch.randn(2, 3, *SIZE["monai_unet"]))
    assert y.shape == (2, 2, *SIZE["monai_unet"])
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(SegbenchError, match="not divisible by 4"):
        net.check_input_size(30, 40)


@pytest.mark.parametrize("model", ["fcn8s", "fcn16s", "fcn32s"])
@pytest.mark.parametrize("size", [(97, 131), (1, 1), (64, 64), (33, 250)])
def test_fcn_output_matches_input_size(model, size):
    net = build_model(model, 3, 21, norm="none", width=0.0625).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, *size)).shape == (1, 21, *size)


def test_fcn8s_parameter_count_matches_the_original():
    net = build_model("fcn8s", 3, 21, norm="none", width=1)
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    vgg = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    expected = sum(conv(a, b, 3) for a, b in vgg)
    expected += conv(512, 4096, 7) + conv(4096, 4096, 1)  # fc6, fc7
    expected += conv(4096, 21, 1) + conv(512, 21, 1) + conv(256, 21, 1)  # score_fr, score_pool4, score_pool3
    expected += 2 * conv(21, 21, 4, bias=False) + conv(21, 21, 16, bias=False)  # upscore2, upscore_pool4, upscore8
    assert sum(p.numel() for p in net.parameters()) == expected == 134_489_759


def test_fcn_upsamplers_start_bilinear():
    net = build_model("fcn32s", 3, 2, norm="none", width=0.0625)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 2, 8, 8)
    up = net.upscore_final(ramp)
    interior = up[0, 0, 40, 40:200]
    assert torch.all(interior[1:] - interior[:-1] >= -1e-5)  # monotone ramp, no checkerboard


def test_resunet_rejects_sizes_its_depth_cannot_halve():
    net = build_model("resunet", 1, 1, norm="none", width=4, depth=4)
    with pytest.raises(SegbenchError, match="97x131 is not divisible by 8"):
        net(torch.randn(1, 1, 97, 131))


def test_unknown_norm_lists_every_valid_name():
    with pytest.raises(SegbenchError) as err:
        build_norm("nosuch", 8)
    for name in NORMS:
        assert name in str(err.value)


def test_unknown_norm_option_lists_the_valid_ones():
    with pytest.raises(SegbenchError, match="takes no option 'num_groups'.*eps, affine"):
        build_norm("instance", 8, num_groups=2)


def test_group_count_that_does_not_divide_names_both_numbers():
    with pytest.raises(SegbenchError, match="num_groups=7 does not divide a layer's 16 channels"):
        build_model("resunet", 1, 1, norm="group", norm_options={"num_groups": 7}, width=16)


@pytest.mark.parametrize("alias,name", [("GN", "group"), ("group_norm", "group"), ("BatchNorm", "batch")])
def test_norm_names_are_normalised(alias, name):
    assert type(build_norm(alias, 8)) is type(build_norm(name, 8))


def test_conditional_norm_pays_nothing_when_unused():
    assert build_model("resunet", 2, 1, norm="batch", width=4, depth=2).conditioner is None
    spade = build_model("resunet", 2, 1, norm="spade", cond_channels=[1], width=4, depth=2)
    assert spade.conditioner.out_channels == 1


def test_spade_map_is_aligned_with_fcns_padded_features():
    """FCN pads by 100: stage-1 features and the conditioning map must cover the same pixels."""
    from segbench.models import build_model
    from segbench.nn.conditional import SPADE

    model = build_model("fcn8s", 3, 21, norm="spade", width=0.0625).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, SPADE):
            module.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[-2:], args[1])))
    image = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        model(image)
    size, cond = seen[0]
    assert tuple(size) == (40 + 198, 52 + 198)
    torch.testing.assert_close(cond.image_at(size), torch.nn.functional.pad(image, (99, 99, 99, 99)))
    deep, _ = seen[-1]
    assert cond.image_at(deep).shape[-2:] == deep


def test_fcn_he_init_keeps_activations_alive_from_scratch():
    """torch's default init shrinks a 13-conv plain net's activations ~100x; He init keeps their scale."""
    from segbench.models import build_model

    def pool5_std(init):
        torch.manual_seed(0)
        model = build_model("fcn8s", 3, 21, norm="none", width=0.125, init=init).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            for stage in model.stages:
                for layer in stage:
                    x = layer(x)
                x = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
        return float(x.std())

    assert pool5_std("default") < 0.05 and pool5_std("he") > 0.3
    assert not build_model("fcn8s", 3, 21, width=0.0625).upscore_final.weight.requires_grad  # fixed bilinear


def test_fcn_staged_recipe_starts_each_stage_from_the_previous(tmp_path):
    """model.init_from copies every weight whose name and shape match (FCN-32s -> FCN-16s)."""
    from segbench.io import save_torch
    from segbench.train.prepare import init_from_checkpoint

    coarse = build_model("fcn32s", 3, 21, width=0.0625)
    torch.nn.init.normal_(coarse.score_fr.weight)
    save_torch(tmp_path / "c.pt", {"model": coarse.state_dict()})
    fine = build_model("fcn16s", 3, 21, width=0.0625)
    copied = init_from_checkpoint(fine, str(tmp_path / "c.pt"))
    assert copied > 20
    torch.testing.assert_close(fine.score_fr.weight, coarse.score_fr.weight)
    assert not fine.score_pool4.weight.any()  # new in 16s: stays zero-initialised
    with pytest.raises(SegbenchError, match="no checkpoint"):
        init_from_checkpoint(fine, str(tmp_path / "absent"))


@pytest.mark.filterwarnings("ignore:norm=syncbatch outside")
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_hands_on_activations_in_its_inputs_memory_format(norm, dims):
    """An NCHW net stays NCHW through the norm slot: a norm that returned channels-last strides (a
    normalization over channels done as movedim + layer_norm) switched the next conv to its
    channels-last kernels, whose float32 backward segfaults on the CPU in this torch build."""
    from segbench.models import ResUNet
    from segbench.nn.norms import has_3d_form

    if dims == 3 and not has_3d_form(norm):
        pytest.skip(f"norm={norm} has no 3-D form")
    options = NORM_KW.get(norm, {}) | ({"num_groups": 2} if norm in ("ws_group", "evonorm_s0") else {})
    torch.manual_seed(0)
    net = ResUNet(3, 2, width=4, depth=2, norm=norm, norm_options=options, dims=dims).train()
    handed_on = []
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            module.register_forward_pre_hook(lambda m, args: handed_on.append(args[0].is_contiguous()))
    net(torch.randn(2, 3, *((16, 16) if dims == 2 else (8, 8, 8)))).square().mean().backward()
    assert handed_on and all(handed_on)


def test_register_norm_puts_a_users_norm_in_every_slot():
    from torch import nn

    from segbench.errors import SegbenchError
    from segbench.nn import NORM_DIMS, NORMS, register_norm
    from segbench.nn.norms import canonical_norm_name

    class Scale(nn.Module):
        def __init__(self, channels, gain=2.0):
            super().__init__()
            self.gain = gain

        def forward(self, x):
            return x * self.gain

    try:
        register_norm("test_scale", lambda channels, gain=2.0: Scale(channels, gain))
        assert canonical_norm_name("Test-Scale") == "test_scale" and NORM_DIMS["test_scale"] == (2,)
        net = build_model("resunet", 3, 1, norm="test_scale", norm_options={"gain": 0.5}, width=4, depth=2)
        assert any(isinstance(m, Scale) and m.gain == 0.5 for m in net.modules())
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 1, 16, 16)
        with pytest.raises(SegbenchError, match="no 3-D form"):
            build_model("resunet", 3, 1, norm="test_scale", width=4, depth=2, dims=3)
        with pytest.raises(SegbenchError, match="is taken"):
            register_norm("GroupNorm", lambda c: nn.GroupNorm(1, c))
    finally:
        NORMS.pop("test_scale", None)
        NORM_DIMS.pop("test_scale", None)


def test_norm_names_are_the_ones_users_type_and_aliases_resolve_to_them():
    from segbench.config import group_options
    from segbench.errors import SegbenchError
    from segbench.nn.norms import canonical_norm_name

    assert canonical_norm_name("evonormb0") == "evonorm_b0" and canonical_norm_name("WSGN") == "ws_group"
    presets = {"batch_tf1", "instance_noaffine"}
    assert set(group_options("norm")) - presets <= set(NORMS)
    with pytest.raises(SegbenchError, match="ws_group"):
        canonical_norm_name("no_such_norm")
