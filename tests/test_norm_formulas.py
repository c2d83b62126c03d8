"""Each norm against its formula, written with plain tensor arithmetic (not against segbench's code)."""

from __future__ import annotations

import pytest
import torch

from segbench.nn import SPADE, Condition, adain, build_norm

EPS = 1e-5


def formula(x, dims, eps=EPS):
    """(x - mean) / sqrt(biased var + eps) with statistics over ``dims``."""
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def group_formula(x, groups):
    n, c, h, w = x.shape
    return formula(x.reshape(n, groups, c // groups, h, w), (2, 3, 4)).reshape(n, c, h, w)


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(4, 6, 5, 7) * 3 + 1.5


def affine(norm, c):
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, c))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, c))
    return norm.weight.view(1, c, 1, 1), norm.bias.view(1, c, 1, 1)


def test_batch_train_is_per_channel_over_n_h_w(x):
    bn = build_norm("batch", 6).train()
    gamma, beta = affine(bn, 6)
    expected = formula(x, (0, 2, 3)) * gamma + beta
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=1e-5)


def test_batch_running_stats_follow_momentum_rule_with_unbiased_variance(x):
    bn = build_norm("batch", 6, momentum=0.1).train()
    bn(x)
    m = x.numel() / 6
    mean = x.mean((0, 2, 3))
    unbiased = ((x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / (m - 1)
    torch.testing.assert_close(bn.running_mean, 0.9 * torch.zeros(6) + 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 * torch.ones(6) + 0.1 * unbiased)


def test_batch_eval_uses_running_stats(x):
    bn = build_norm("batch", 6, affine=False)
    bn.running_mean.copy_(torch.arange(6.0))
    bn.running_var.copy_(torch.arange(1.0, 7.0))
    bn.eval()
    expected = (x - torch.arange(6.0).view(1, -1, 1, 1)) / torch.sqrt(torch.arange(1.0, 7.0).view(1, -1, 1, 1) + EPS)
    torch.testing.assert_close(bn(x), expected)


def test_batch_eval_stats_batch_normalizes_with_the_batch(x):
    bn = build_norm("batch", 6, affine=False, eval_stats="batch").eval()
    torch.testing.assert_close(bn(x), formula(x, (0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert torch.equal(bn.running_mean, torch.zeros(6))


def test_batch_with_one_sample_equals_instance(x):
    one = x[:1]
    bn = build_norm("batch", 6, affine=False).train()
    inorm = build_norm("instance", 6, affine=False)
    torch.testing.assert_close(bn(one), inorm(one), atol=1e-5, rtol=1e-5)


def test_instance_is_per_sample_and_channel_over_h_w(x):
    norm = build_norm("instance", 6)
    gamma, beta = affine(norm, 6)
    torch.testing.assert_close(norm(x), formula(x, (2, 3)) * gamma + beta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.eval()(x), norm.train()(x))


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_is_per_sample_over_channel_groups(x, groups):
    norm = build_norm("group", 6, num_groups=groups)
    gamma, beta = affine(norm, 6)
    torch.testing.assert_close(norm(x), group_formula(x, groups) * gamma + beta, atol=1e-5, rtol=1e-5)


def test_group_size_sets_the_number_of_groups(x):
    assert build_norm("group", 6, group_size=3).num_groups == 2


def test_layer_is_per_sample_over_c_h_w(x):
    norm = build_norm("layer", 6)
    gamma, beta = affine(norm, 6)
    torch.testing.assert_close(norm(x), formula(x, (1, 2, 3)) * gamma + beta, atol=1e-5, rtol=1e-5)


def test_group_extremes_are_layer_and_instance(x):
    torch.testing.assert_close(build_norm("group", 6, num_groups=1)(x), build_norm("layer", 6)(x))
    torch.testing.assert_close(
        build_norm("group", 6, num_groups=6)(x), build_norm("instance", 6)(x), atol=1e-5, rtol=1e-5
    )


def test_syncbatch_in_one_process_equals_batch(x, monkeypatch):
    from segbench.nn import syncbn

    monkeypatch.setattr(syncbn, "_warned_single_process", False)  # it warns once per process
    sync, plain = build_norm("syncbatch", 6).train(), build_norm("batch", 6).train()
    with pytest.warns(UserWarning, match="behaves as norm=batch"):
        out = sync(x)
    torch.testing.assert_close(out, plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_batchrenorm_without_corrections_equals_batch(x):
    brn = build_norm("batchrenorm", 6, r_max=1.0, d_max=0.0).train()
    brn.running_mean.fill_(3.0)  # far from the batch: r and d would matter if not clipped away
    brn.running_var.fill_(9.0)
    gamma, beta = affine(brn, 6)
    torch.testing.assert_close(brn(x), formula(x, (0, 2, 3)) * gamma + beta, atol=1e-5, rtol=1e-5)


def test_batchrenorm_corrects_toward_running_stats(x):
    brn = build_norm(
        "batchrenorm", 6, r_max=10.0, d_max=10.0, affine=False, hold_steps=0, r_relax_steps=0, d_relax_steps=0
    ).train()
    brn.running_mean.fill_(0.5)
    brn.running_var.fill_(4.0)
    mean, std = x.mean((0, 2, 3), keepdim=True), torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + EPS)
    sigma = torch.sqrt(torch.tensor(4.0) + EPS)
    r, d = std / sigma, (mean - 0.5) / sigma
    out = brn(x)
    torch.testing.assert_close(out, (x - mean) / std * r + d, atol=1e-5, rtol=1e-5)
    # Unclipped, r and d fold the batch statistics back out: x normalized by the running ones.
    torch.testing.assert_close(out, (x - 0.5) / sigma, atol=1e-4, rtol=1e-4)


def test_batchrenorm_follows_the_papers_schedule():
    """Plain BN while holding, then r_max opens from 1 and d_max from 0 (Ioffe 2017, section 4.1)."""
    brn = build_norm("batchrenorm", 6, r_max=3.0, d_max=5.0, hold_steps=10, r_relax_steps=40, d_relax_steps=20)
    limits = {}
    for step in (0, 10, 20, 30, 50, 100):
        brn.num_batches_tracked.fill_(step)
        limits[step] = brn.current_limits()
    assert limits[0] == limits[10] == (1.0, 0.0)
    assert limits[20] == pytest.approx((1.5, 2.5)) and limits[30] == pytest.approx((2.0, 5.0))
    assert limits[50] == limits[100] == (3.0, 5.0)


def test_batchrenorm_under_precise_bn_keeps_a_cumulative_average(x):
    """momentum=None (set by precise BN) means the exact mean of the batches' statistics."""
    from segbench.nn.bn_stats import recompute_bn_stats

    model = torch.nn.Sequential(build_norm("batchrenorm", 6))
    chunks = list(x.split(2))
    recompute_bn_stats(model, chunks, "cpu")
    expected = torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0)
    torch.testing.assert_close(model[0].running_mean, expected)
    assert model[0].momentum == 0.01


def test_spade_with_zero_gamma_beta_equals_inner_norm(x):
    spade = SPADE(6, cond_channels=2, inner=build_norm("instance", 6, affine=False), hidden=8)
    for conv in (spade.gamma, spade.beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    cond = Condition(torch.randn(4, 2, 20, 28))
    torch.testing.assert_close(spade(x, cond), formula(x, (2, 3)), atol=1e-5, rtol=1e-5)


def test_spade_modulates_with_the_resized_map(x):
    spade = SPADE(6, cond_channels=1, inner=build_norm("batch", 6, affine=False), hidden=4, kernel=1)
    cond = Condition(torch.randn(4, 1, 10, 14))
    m = torch.nn.functional.avg_pool2d(cond.image, 2)  # area resize to the feature map's 5 x 7
    hidden = torch.relu(spade.shared[0](m))
    expected = formula(x, (0, 2, 3)) * (1 + spade.gamma(hidden)) + spade.beta(hidden)
    torch.testing.assert_close(spade(x, cond), expected, atol=1e-5, rtol=1e-5)


def test_adain_output_has_target_statistics(x):
    mu_s, sigma_s = torch.randn(4, 6), torch.rand(4, 6) + 0.5
    y = adain(x, mu_s, sigma_s, eps=0.0)
    torch.testing.assert_close(y.mean((2, 3)), mu_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.std((2, 3), unbiased=False), sigma_s, atol=1e-5, rtol=1e-5)


def test_running_statistics_context_overrides_eval_stats_batch(x):
    from segbench.nn.bn_stats import running_statistics

    bn = build_norm("batch", 6, eval_stats="batch", affine=False)
    bn.running_mean.fill_(2.0)
    bn.running_var.fill_(4.0)
    bn.eval()
    with running_statistics(torch.nn.Sequential(bn)):
        torch.testing.assert_close(bn(x), (x - 2.0) / torch.sqrt(torch.tensor(4.0) + EPS))
    assert bn.eval_stats == "batch"
    torch.testing.assert_close(bn(x), formula(x, (0, 2, 3)), atol=1e-5, rtol=1e-5)


def test_precise_bn_equals_torch_swa_update_bn_and_keeps_dropout_off(x):
    """torch.optim.swa_utils.update_bn computes the same cumulative average; it puts the whole model
    in train mode, so dropout (and any other train-time layer) runs while the statistics are taken.
    segbench's keeps all but BN in eval mode: equal without dropout, and free of it with dropout."""
    from torch.optim.swa_utils import update_bn

    from segbench.nn.bn_stats import recompute_bn_stats

    def net(p: float):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(6, 8, 3),
            torch.nn.Dropout(p),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 4, 1),
            torch.nn.BatchNorm2d(4),
        )

    chunks = list(x.split(2))
    ours, theirs = net(0.0), net(0.0)
    recompute_bn_stats(ours, chunks, "cpu")
    update_bn(chunks, theirs)
    for a, b in zip(ours.modules(), theirs.modules()):
        if isinstance(a, torch.nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)
    with_dropout, reference = net(0.5), net(0.0)
    recompute_bn_stats(with_dropout, chunks, "cpu")
    recompute_bn_stats(reference, chunks, "cpu")
    torch.testing.assert_close(with_dropout[2].running_mean, reference[2].running_mean)
