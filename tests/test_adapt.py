"""Test-time adaptation: AdaBN's statistics and TENT's entropy step against their formulas, and the
command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from segbench.analysis.adapt import adabn, adapt, affine_parameters, prediction_entropy, tent
from segbench.errors import SegbenchError
from segbench.train.trainer import train


def test_prediction_entropy_against_scipy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    p = torch.sigmoid(logits).numpy().ravel()
    binary = np.mean([stats.entropy([q, 1 - q]) for q in p])
    assert float(prediction_entropy(logits, "multilabel")) == pytest.approx(binary, rel=1e-10)
    soft = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    assert float(prediction_entropy(logits, "multiclass")) == pytest.approx(
        stats.entropy(soft, axis=1).mean(), rel=1e-10
    )


def test_adabn_statistics_are_the_target_images_own():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    batches = [torch.randn(4, 3, 5, 5) * 2 + 3 for _ in range(3)]
    assert adabn(model, batches, torch.device("cpu")) == 3
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, means)
    torch.testing.assert_close(model[0].running_var, variances)


def test_tent_moves_only_the_norms_affine_weights_and_lowers_the_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1), nn.GroupNorm(1, 1)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [torch.randn(4, 2, 8, 8) for _ in range(2)] * 15
    seen = tent(model, images, "multilabel", torch.device("cpu"), lr=0.05)
    adapted = {id(p) for p in affine_parameters(model)}
    assert len(adapted) == 4  # BN and GN, weight and bias
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != (id(param) in adapted), name
    assert seen[-1] < seen[0]


def test_adapt_on_a_held_out_site_scores_every_method(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("data.test_sites=[site1]", "norm=batch"), run)
    out = adapt(str(run), ["none", "adabn", "tent"], batches=2, tent_steps=2)
    assert set(out["methods"]) == {"none", "adabn", "tent"} and out["test_sites"] == ["site1"]
    assert all(0 <= r["dice"] <= 1 for r in out["methods"].values())
    assert json.loads((run / "adapt.json").read_text())["metric"] == "dice"
    with pytest.raises(SegbenchError, match="choose from none, adabn, tent"):
        adapt(str(run), ["adabnn"])
