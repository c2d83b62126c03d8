"""The first question's settings as options: TF1's BN defaults, never-run updates, the skipped activation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segbench.config import compose
from segbench.models import ResUNet
from segbench.nn import build_norm


def test_batch_tf1_preset_is_tf1s_defaults():
    cfg = compose(["norm=batch_tf1"])
    assert (
        cfg.norm.name == "batch" and cfg.norm.momentum == pytest.approx(0.001) and cfg.norm.eps == pytest.approx(1e-3)
    )
    layer = build_norm("batch", 3, momentum=cfg.norm.momentum, eps=cfg.norm.eps)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    layer.train()(x)
    # TF1: moving = decay * moving + (1 - decay) * batch, decay 0.999, from (0, 1).
    mean = x.mean((0, 2, 3))
    assert torch.allclose(layer.running_mean, 0.001 * mean, atol=1e-6)
    var = x.var((0, 2, 3), unbiased=True)
    assert torch.allclose(layer.running_var, 0.999 + 0.001 * var, atol=1e-6)


def test_never_updated_bn_trains_like_bn_and_keeps_zero_one():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6) * 3 + 2
    frozen = build_norm("batch", 3, update_stats=False).train()
    plain = build_norm("batch", 3).train()
    assert torch.allclose(frozen(x), plain(x), atol=1e-6)  # training output: batch statistics either way
    assert torch.all(frozen.running_mean == 0) and torch.all(frozen.running_var == 1)
    frozen.eval()
    expected = (x - 0) / torch.sqrt(torch.tensor(1.0 + frozen.eps))  # eval with (0, 1)
    assert torch.allclose(frozen(x), expected, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_inner_act_false_drops_the_relu_between_a_blocks_convs(dims):
    torch.manual_seed(0)
    with_act = ResUNet(4, 1, width=4, depth=2, norm="batch", dims=dims)
    torch.manual_seed(0)
    without = ResUNet(4, 1, width=4, depth=2, norm="batch", dims=dims, inner_act=False)
    assert isinstance(with_act.stem.act1, nn.ReLU) and isinstance(without.stem.act1, nn.Identity)
    # Same seeds for every shared layer: the arms differ in the wiring only.
    for (name, a), (_, b) in zip(with_act.state_dict().items(), without.state_dict().items()):
        assert torch.equal(a, b), name
    shape = (1, 4, 8, 8) if dims == 2 else (1, 4, 4, 8, 8)
    assert without(torch.randn(shape)).shape[1] == 1


def test_every_cause_composes():
    from segbench.config import group_options

    causes = group_options("cause")
    assert {
        "none",
        "bn_pytorch",
        "bn_tf1",
        "bn_tf1_never_updated",
        "none_no_inner_act",
        "bn_pytorch_no_inner_act",
    } <= set(causes)
    for cause in causes:
        cfg = compose(["experiment=why_bn_failed", f"cause={cause}"])
        assert cfg.trainer.max_steps == 1200 and cfg.study.margin == pytest.approx(0.02)
    assert compose(["experiment=why_bn_failed", "cause=bn_tf1_never_updated"]).norm.update_stats is False


def test_until_plateau_stops_at_the_plateau_and_a_resume_trains_nothing(tiny_cfg, tmp_path):
    from segbench.train.trainer import train

    # epsilon 1: no validation can improve by that much, so the check passes at its 4th validation.
    cfg = tiny_cfg(
        "trainer.max_steps=40", "trainer.val_every=2", "trainer.until_plateau=true", "trainer.plateau_epsilon=1.0"
    )
    metrics = train(cfg, tmp_path)
    assert metrics["steps"] == 8 and metrics["convergence"]["converged"] is True
    assert metrics["budget"] == "40 steps (cap; until plateau)"
    again = train(
        tiny_cfg(
            "trainer.max_steps=40",
            "trainer.val_every=2",
            "trainer.until_plateau=true",
            "trainer.plateau_epsilon=1.0",
            "trainer.resume=true",
        ),
        tmp_path,
    )
    assert again["steps"] == 8


def test_convergence_rule_on_known_curves():
    from segbench.train.convergence import plateau

    rising = [{"step": 50 * i, "m": 0.1 * i} for i in range(1, 9)]
    flat = [{"step": 50 * i, "m": min(0.8, 0.2 * i)} for i in range(1, 9)]
    assert plateau(rising, "m")["converged"] is False
    assert plateau(flat, "m")["converged"] is True
    assert plateau(flat[:3], "m")["converged"] is None  # too few validations to tell


def test_until_plateau_keeps_training_a_noisy_curve_whose_trend_still_rises():
    from segbench.train.convergence import plateau, plateau_reached

    # One lucky early validation (0.80) leaves the last three below it, so the best-of-last-k rule
    # calls the run converged; the last half's trend still climbs (REPORT 4a's FCN no-BN seed 1300).
    values = [0.2, 0.3, 0.35, 0.4, 0.45, 0.80, 0.55, 0.6, 0.62, 0.65, 0.7, 0.72]
    history = [{"step": 250 * (i + 1), "m": v} for i, v in enumerate(values)]
    check = plateau(history, "m")
    assert check["converged"] is True and check["trend_flat"] is False
    steps, tail = [h["step"] for h in history[6:]], values[6:]
    slope = np.polyfit(steps, tail, 1)[0]  # an independent least-squares fit
    assert check["projected_gain"] == pytest.approx(slope * (steps[-1] - steps[0]))
    assert not plateau_reached(check)
    flat = [{"step": 250 * (i + 1), "m": v} for i, v in enumerate([0.2, 0.5, 0.7, 0.8] + [0.8] * 8)]
    assert plateau_reached(plateau(flat, "m"))
    assert not plateau_reached(plateau(flat[:3], "m"))  # unknown is not a plateau


def test_precise_bn_recomputes_a_never_updating_bn_and_leaves_it_never_updating():
    from segbench.nn.bn_stats import recompute_bn_stats

    model = nn.Sequential(build_norm("batch", 3, update_stats=False))
    batches = [torch.randn(4, 3, 5, 5) * 2 + 3 for _ in range(3)]
    recompute_bn_stats(model, batches, "cpu")
    layer = model[0]
    assert torch.allclose(layer.running_mean, torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0), atol=1e-5)
    assert layer.update_stats is False


def test_a_cause_that_predicts_worse_is_named_even_when_its_slower_learning_is_unresolved():
    from segbench.analysis.causes import answer_lines
    from segbench.analysis.decide import Verdict

    def result(verdict, diff):
        return {
            "verdict": verdict,
            "kind": Verdict.HELD if verdict == "held" else Verdict.INCONCLUSIVE,
            "early": False,
            "diff": diff,
            "low": diff - 0.1,
            "high": diff + 0.1,
            "p": 0.01,
            "p_holm": 0.02,
            "diffs": [diff] * 4,
        }

    rows = [
        {
            "arm": "bn_tf1_never_updated",
            "what": "never updated",
            "worse": result("held", -0.3),
            "slower": result("inconclusive at 4 seeds", 5.0),
        },
        {
            "arm": "bn_pytorch",
            "what": "pytorch",
            "worse": result("inconclusive at 4 seeds", 0.01),
            "slower": result("held", 0.1),
        },
    ]
    lines = answer_lines({"rows": rows, "runs": 12, "nothing_at_05": []})
    assert "never updated (learning slower not resolved)" in lines[0]
    assert "pytorch" in lines[1] and "never updated" not in lines[2]
    assert "UPDATE_OPS" in next(line for line in lines if line.startswith("4."))
