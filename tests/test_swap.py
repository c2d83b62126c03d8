"""The norm slot in any model: ``swap_norms`` against hand-built models, every swappable norm in every
wrapped library network, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.models import build_model
from segbench.nn.norms import NORMS, has_3d_form
from segbench.nn.swap import NOT_SWAPPABLE, swap_norms

SWAPPABLE = [n for n in NORMS if n not in NOT_SWAPPABLE]


class Small(nn.Module):
    """conv -> norm -> ReLU -> conv -> norm, with the norm layers made by ``norm(channels)``."""

    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), norm(8)
        )

    def forward(self, x):
        return self.body(x)


def _trained(model: nn.Module, shape=(4, 3, 16, 16), steps: int = 3) -> nn.Module:
    """A few steps of training, so affine weights and running statistics are not at their initial values."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        out = model(torch.randn(shape))
        out = out["out"] if isinstance(out, dict) else out
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
    return model


def test_batch_for_batch_changes_nothing():
    model = _trained(Small()).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    assert swap_norms(model, "batch") == {"BatchNorm2d -> batch": 2}
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_group_equals_a_hand_built_group_model_with_copied_weights():
    bn = _trained(Small())
    hand = Small(lambda c: nn.GroupNorm(4, c))
    hand.load_state_dict({k: v for k, v in bn.state_dict().items() if "running" not in k and "num_batches" not in k})
    swap_norms(bn, "group", {"num_groups": 4})
    x = torch.randn(2, 3, 16, 16)
    for mode in (True, False):
        bn.train(mode), hand.train(mode)
        torch.testing.assert_close(bn(x), hand(x), rtol=0, atol=0)


def test_sync_batch_norm_and_timm_layernorm2d_are_swapped_and_a_token_layernorm_is_kept():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.SyncBatchNorm.convert_sync_batchnorm(Small())
    assert swap_norms(model, "instance") == {"SyncBatchNorm -> instance": 2}
    mixed = nn.Sequential(nn.Conv2d(3, 8, 1), timm_layers.LayerNorm2d(8), nn.Flatten(2), nn.LayerNorm(16))
    report = swap_norms(mixed, "group", {"num_groups": 2})
    assert report["LayerNorm2d -> group"] == 1 and sum(v for k, v in report.items() if "kept" in k) == 1
    assert isinstance(mixed[3], nn.LayerNorm) and mixed(torch.randn(1, 3, 4, 4)).shape == (1, 8, 16)


@pytest.mark.parametrize("norm", sorted(NOT_SWAPPABLE))
def test_norms_that_need_the_conv_or_the_input_are_refused_in_one_line(norm):
    with pytest.raises(SegbenchError, match=f"norm={norm} cannot be swapped into an existing model: it "):
        swap_norms(Small(), norm)


def test_a_model_without_norms_and_a_group_count_that_does_not_divide_are_one_line():
    with pytest.raises(SegbenchError, match="has no normalization layer to swap"):
        swap_norms(nn.Sequential(nn.Conv2d(3, 3, 1)), "group")
    with pytest.raises(SegbenchError, match=r"norm=group for .* 8 channels"):
        swap_norms(Small(), "group", {"num_groups": 3})


TINY = {  # each wrapped library network, as small as it builds
    "dynunet": dict(kernel_size=[3, 3, 3], strides=[1, 2, 2], filters=[8, 8, 16]),
    "segresnet": dict(init_filters=8, blocks_down=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("model_name", sorted(TINY))
@pytest.mark.parametrize("norm", SWAPPABLE)
def test_every_swappable_norm_trains_in_every_wrapped_model(model_name, norm, dims):
    pytest.importorskip("monai")
    if dims == 3 and not has_3d_form(norm):
        with pytest.raises(SegbenchError, match="has no 3-D form"):
            build_model(model_name, 2, 1, norm=norm, dims=dims, **TINY[model_name])
        return
    torch.manual_seed(0)
    model = build_model(model_name, 2, 1, norm=norm, dims=dims, **TINY[model_name])
    shape = (2, 2) + (8, 16, 16)[-dims:]
    x = torch.randn(shape)
    model.train()
    out = model(x)
    assert out.shape == (2, 1, *shape[2:])
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("arch", ["fcn_resnet50", "deeplabv3_resnet50"])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_torchvision_networks_take_four_modalities_and_any_norm(arch, norm):
    torch.manual_seed(0)
    model = build_model("torchvision_seg", 4, 1, norm=norm, arch=arch)
    out = model(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) or norm == "batch"


def test_torchvision_weights_must_be_a_local_file(tmp_path):
    with pytest.raises(SegbenchError, match="is not a file; segbench downloads nothing"):
        build_model("torchvision_seg", 3, 1, norm="batch", weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("norm", ["batch", "group", "layer_channels", "instance"])
def test_smp_unet_on_a_timm_encoder_takes_any_norm(norm):
    pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = build_model(
        "smp_unet",
        4,
        1,
        norm=norm,
        norm_options={"num_groups": 4} if norm == "group" else None,
        decoder_channels=[32, 16, 8, 8],
    )
    out = model(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    out.mean().backward()
    assert model.norm_report and all(k.endswith(f"-> {norm}") for k in model.norm_report)


def test_timms_norm_activation_layers_keep_their_activation():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), timm_layers.BatchNormAct2d(8, act_layer=nn.ReLU))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    swap_norms(model, "batch")
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the ReLU is still there
    assert (model(x) >= 0).all()


def test_a_users_own_network_trains_in_segbench_loop_with_the_chosen_norm(tiny_cfg, tmp_path):
    from segbench.models import MODELS, register_model
    from segbench.train.trainer import train

    def build(in_channels, num_outputs, hidden=8):
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, num_outputs, 1),
        )

    register_model("tiny_user_net", build)
    try:
        metrics = train(
            tiny_cfg("model=custom", "model.name=tiny_user_net", "+model.hidden=4", "norm=group", "norm.num_groups=2"),
            tmp_path / "run",
        )
        assert metrics["model"] == "tiny_user_net" and 0 <= metrics["test"]["best"]["dice"] <= 1
        with pytest.raises(SegbenchError, match="model=custom needs model.name="):
            build_model("custom", 4, 1)
        with pytest.raises(SegbenchError, match="is a built-in model"):
            register_model("resunet", build)
    finally:
        MODELS.pop("tiny_user_net", None)
