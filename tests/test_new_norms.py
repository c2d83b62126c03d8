"""FRN, EvoNorm, WS+GN, cross-iteration BN, switchable and frozen BN: against timm / torchvision
where they have the layer, against the papers' formulas where they do not, and in the slot."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segbench.models import build_model
from segbench.nn import build_norm
from segbench.nn.crossbatch import CrossIterationBatchNorm2d
from segbench.nn.weight_std import StdConv2d

timm_layers = pytest.importorskip("timm.layers")


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial parameters, so parity is not checked at ones and zeros only."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 1.5 - 0.25)
    return module


def copy_parameters(ours: nn.Module, theirs: nn.Module, names: dict[str, str]) -> None:
    with torch.no_grad():
        for mine, other in names.items():
            getattr(theirs, other).copy_(getattr(ours, mine))


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(3, 8, 6, 5) * 2 + 0.5


@pytest.mark.parametrize("act", [True, False])
def test_frn_matches_timm(x, act):
    ours = randomize(build_norm("frn", 8, context={"apply_act": act}, eps=1e-5))
    theirs = timm_layers.FilterResponseNormTlu2d(8, apply_act=act, eps=1e-5)
    copy_parameters(ours, theirs, {"weight": "weight", "bias": "bias", **({"tau": "tau"} if act else {})})
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_frn_formula(x):
    frn = randomize(build_norm("frn", 8, context={"apply_act": True}))
    c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    y = x / torch.sqrt((x**2).mean((2, 3), keepdim=True) + 1e-6) * c(frn.weight) + c(frn.bias)
    torch.testing.assert_close(frn(x), torch.maximum(y, c(frn.tau)))
    # One sample alone is normalized the same as inside a batch: FRN has no batch statistics.
    torch.testing.assert_close(frn(x[:1]), frn(x)[:1])


def test_evonorm_b0_matches_timm_in_train_and_eval(x):
    ours = randomize(build_norm("evonorm_b0", 8, context={"apply_act": True}))
    theirs = timm_layers.EvoNorm2dB0(8, apply_act=True, eps=1e-3, momentum=0.1)
    copy_parameters(ours, theirs, {"weight": "weight", "bias": "bias", "v": "v"})
    ours.train(), theirs.train()
    for step in range(3):
        torch.testing.assert_close(ours(x + step), theirs(x + step), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_evonorm_s0_matches_timm(x, groups):
    ours = randomize(build_norm("evonorm_s0", 8, context={"apply_act": True}, num_groups=groups))
    theirs = timm_layers.EvoNorm2dS0(8, groups=groups, apply_act=True, eps=1e-5)
    copy_parameters(ours, theirs, {"weight": "weight", "bias": "bias", "v": "v"})
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_weight_standardized_conv_matches_timm(x):
    ours = randomize(StdConv2d(8, 4, 3, padding=1, bias=True, ws_eps=1e-6))
    theirs = timm_layers.StdConv2d(8, 4, 3, padding=1, bias=True, eps=1e-6)
    copy_parameters(ours, theirs, {"weight": "weight", "bias": "bias"})
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    w = ours.standardized_weight().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.var(1, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)


def test_frozen_bn_is_an_affine_map_of_its_buffers(x):
    frozen = build_norm("frozen_batch", 8)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(frozen, name).copy_(torch.linspace(-1, 2, 8))
        frozen.running_var.copy_(torch.linspace(0.5, 3, 8))
    c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    expected = (x - c(frozen.running_mean)) / torch.sqrt(c(frozen.running_var) + 1e-5) * c(frozen.weight) + c(
        frozen.bias
    )
    frozen.train()  # training mode changes nothing: the statistics stay fixed
    torch.testing.assert_close(frozen(x), expected)
    assert list(frozen.parameters()) == []


def test_switchable_with_one_hot_mixture_is_in_ln_or_bn(x):
    sn = randomize(build_norm("switchable", 8)).train()
    for k, reference in enumerate(
        [
            lambda: F.instance_norm(x, eps=1e-5),
            lambda: F.group_norm(x, 1, eps=1e-5),
            lambda: F.batch_norm(x, None, None, training=True, eps=1e-5),
        ]
    ):
        with torch.no_grad():
            logits = torch.full((3,), -1e4)
            logits[k] = 1e4
            sn.mean_weight.copy_(logits)
            sn.var_weight.copy_(logits)
        c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        torch.testing.assert_close(sn(x), reference() * c(sn.weight) + c(sn.bias), atol=1e-4, rtol=1e-4)
    mixture = sn.tensorboard_scalars()
    assert mixture["mean_bn"] == pytest.approx(1.0) and mixture["var_in"] == pytest.approx(0.0)


def test_cross_iteration_bn_without_history_is_bn(x):
    conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
    cbn = randomize(CrossIterationBatchNorm2d(4, window=1, burnin=0, conv=conv)).train()
    bn = nn.BatchNorm2d(4).train()
    copy_parameters(cbn, bn, {"weight": "weight", "bias": "bias"})
    for step in range(2):
        torch.testing.assert_close(cbn(conv(x + step)), bn(conv(x + step)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cbn.running_mean, bn.running_mean)
    torch.testing.assert_close(cbn.running_var, bn.running_var)


def test_cross_iteration_bn_pools_taylor_compensated_statistics(x):
    """Window 2: the previous step's statistics moved to today's weights. The mean of a conv's output is
    linear in its weights, so that move is exact for μ; for ν = E[y²] it is the first-order step."""
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
    cbn = CrossIterationBatchNorm2d(4, window=2, burnin=0, conv=conv).train()
    x_old, x_new = x, x.flip(0) * 0.5 + 1
    cbn(conv(x_old))
    theta_old = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.add_(torch.randn_like(conv.weight) * 0.05)
    captured = {}
    cbn.register_forward_hook(lambda m, i, o: captured.update(out=o))
    out = cbn(conv(x_new))

    def stats(inp, theta):
        y = F.conv2d(inp, theta, padding=1)
        return y.mean((0, 2, 3)), y.square().mean((0, 2, 3))

    mu_new, nu_new = stats(x_new, conv.weight.detach())
    mu_moved, _ = stats(x_old, conv.weight.detach())  # exact, as μ is linear in θ
    theta = theta_old.clone().requires_grad_(True)
    mu_old, nu_old = stats(x_old, theta)
    dnu = torch.autograd.grad(nu_old, theta, torch.ones_like(nu_old))[0]
    nu_moved = nu_old.detach() + (dnu * (conv.weight.detach() - theta_old)).flatten(1).sum(1)
    mean = (mu_new + mu_moved) / 2
    var = (nu_new + torch.maximum(nu_moved, mu_moved**2)) / 2 - mean**2
    y = conv(x_new)
    expected = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()  # gradients flow through today's statistics
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("model, kw", [("resunet", {"width": 8, "depth": 3}), ("fcn8s", {"width": 0.0625})])
def test_slot_gives_each_new_norm_its_conv_and_activation(model, kw):
    ws = build_model(model, 3, 1, norm="ws_group", norm_options={"num_groups": 2}, **kw)
    assert any(isinstance(m, StdConv2d) for m in ws.modules())
    frn = build_model(model, 3, 1, norm="frn", **kw)
    relus = [m for m in frn.modules() if isinstance(m, nn.ReLU)]
    assert relus == []  # TLU is the non-linearity after every norm the model would follow with ReLU
    cbn = build_model(model, 3, 1, norm="crossbatch", **kw)
    pairs = [(name, m) for name, m in cbn.named_modules() if isinstance(m, CrossIterationBatchNorm2d)]
    assert pairs and all(
        isinstance(m._conv[0], nn.Conv2d) and m._conv[0].out_channels == m.weight.numel() for _, m in pairs
    )
    assert not any("_conv" in key for key in cbn.state_dict())  # the conv is referenced, not owned


def test_frozen_bn_takes_the_statistics_of_a_bn_run(tmp_path):
    from segbench.io import save_torch
    from segbench.train.prepare import init_from_checkpoint

    bn = build_model("resunet", 3, 1, norm="batch", width=8, depth=3).train()
    bn(torch.randn(4, 3, 16, 16))  # running statistics away from their initial values
    save_torch(tmp_path / "bn.pt", {"model": bn.state_dict()})
    frozen = build_model("resunet", 3, 1, norm="frozen_batch", width=8, depth=3)
    init_from_checkpoint(frozen, str(tmp_path / "bn.pt"))
    torch.testing.assert_close(frozen.stem.norm1.running_mean, bn.stem.norm1.running_mean)


def test_switchable_mixture_reaches_tensorboard_and_metrics(tiny_cfg, tmp_path):
    from segbench.analysis.runs import read_scalars
    from segbench.train.trainer import train

    metrics = train(tiny_cfg("norm=switchable"), tmp_path)
    tags = read_scalars(tmp_path / "tb")
    assert "zz_norm/stem.norm1/mean_bn" in tags and "zz_norm/stem.norm1/var_in" in tags
    state = metrics["norm_state"]
    assert sum(state[f"mean_{k}"] for k in ("in", "ln", "bn")) == pytest.approx(1.0)
