"""The trainer end to end on the tiny phantom: run directory, determinism, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from segbench.analysis.runs import read_scalars
from segbench.train import trainer as trainer_module
from segbench.train.trainer import TrainingDiverged, train


def test_run_directory_holds_events_checkpoints_and_metrics(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(), tmp_path)
    scalars = read_scalars(tmp_path / "tb")
    assert {"train/loss", "val/loss", "val/dice", "lr"} <= set(scalars)
    assert scalars["train/loss"][0].tolist() == [1, 2, 3]
    assert scalars["val/dice"][0].tolist() == [3]
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert state["step"] == 3 and "model" in state
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 3 and 0 <= saved["best"]["dice"] <= 1 and saved["images_per_s"] > 0
    assert saved["final"]["dice"] == pytest.approx(metrics["final"]["dice"])
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_regions_target_logs_one_dice_per_region(tiny_cfg, tmp_path):
    train(tiny_cfg("data.target=regions", "trainer.max_steps=1", "trainer.val_every=1"), tmp_path)
    assert {"val/dice_WT", "val/dice_TC", "val/dice_ET"} <= set(read_scalars(tmp_path / "tb"))


def test_same_seed_same_curve(tiny_cfg, tmp_path):
    curves = []
    for name in ("a", "b"):
        train(tiny_cfg("seed=7"), tmp_path / name)
        curves.append(read_scalars(tmp_path / name / "tb")["train/loss"][1])
    assert curves[0].tolist() == curves[1].tolist()


def test_resume_continues_the_same_curve(tiny_cfg, tmp_path):
    full = tmp_path / "full"
    train(tiny_cfg("trainer.max_steps=4", "trainer.val_every=2"), full)
    part = tmp_path / "part"
    train(tiny_cfg("trainer.max_steps=2", "trainer.val_every=2"), part)
    metrics = train(tiny_cfg("trainer.max_steps=4", "trainer.val_every=2", "trainer.resume=true"), part)
    assert metrics["steps"] == 4
    steps, resumed = read_scalars(part / "tb")["train/loss"]
    assert steps.tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(read_scalars(full / "tb")["train/loss"][1]))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    real_step = trainer_module.train_step
    calls = {"n": 0}

    def step_then_nan(*args):
        calls["n"] += 1
        loss = real_step(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_module, "train_step", step_then_nan)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train(tiny_cfg("trainer.max_steps=5"), tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_equal_images_budget_gives_small_batches_more_steps(tiny_cfg, tmp_path):
    small = train(tiny_cfg("trainer.max_images=8", "data.batch_size=2", "trainer.val_every=100"), tmp_path / "s")
    large = train(tiny_cfg("trainer.max_images=8", "data.batch_size=4", "trainer.val_every=100"), tmp_path / "l")
    assert (small["steps"], large["steps"]) == (4, 2)


def test_precise_bn_and_frozen_bn_options_run(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("trainer.precise_bn_batches=2", "trainer.freeze_bn_after=0.5"), tmp_path)
    assert metrics["steps"] == 3


def test_validation_uses_running_statistics(tiny_cfg, tmp_path, monkeypatch):
    seen = []
    real_eval = trainer_module.evaluate

    def spy(net, *args):
        seen.append([m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        return real_eval(net, *args)

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    train(tiny_cfg(), tmp_path)
    assert seen and not any(any(modes) for modes in seen)
