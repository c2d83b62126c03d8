"""The trainer end to end on the tiny phantom: run directory, determinism, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from segbench.analysis.runs import read_scalars
from segbench.errors import SegbenchError
from segbench.train import trainer as trainer_module
from segbench.train.trainer import TrainingDiverged, train


def test_run_directory_holds_events_checkpoints_and_metrics(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(), tmp_path)
    scalars = read_scalars(tmp_path / "tb")
    assert {
        "train/loss",
        "val/loss",
        "val/dice",
        "val/dice_tuned",
        "val/auroc",
        "val/ap",
        "train/loss_eval_mode",
        "zz_test_last/dice",
        "zz_test_last/hd95",
        "train/lr",
    } <= set(scalars)
    assert scalars["train/loss"][0].tolist() == [1, 2, 3]
    assert scalars["val/dice"][0].tolist() == [3]
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert state["step"] == 3 and "model" in state
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 3 and 0 <= saved["val"]["best"]["dice_tuned"] <= 1 and saved["images_per_s"] > 0
    assert saved["val"]["final"]["dice"] == pytest.approx(metrics["val"]["final"]["dice"])
    test = saved["test"]["best"]
    assert {"dice", "dice_pooled", "soft_dice", "auroc", "ap", "hd95", "per_case"} <= set(test)
    assert "dice_tuned" not in test and "threshold_tuned" not in test  # nothing tuned on test
    assert test["threshold"] == pytest.approx(saved["val"]["best"]["threshold_tuned"], abs=0.01)
    assert len(test["per_case"]) == saved["test"]["best"]["cases"] >= 1
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_run_logs_each_validation_and_the_test_results(tiny_cfg, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="segbench.train.trainer"):
        train(tiny_cfg(), tmp_path)
    text = caplog.text
    assert "step 3/3 val:" in text and "dice_tuned" in text and "chosen on val" in text


def test_stop_at_ends_the_run_at_the_first_validation_that_reaches_it(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("trainer.val_every=1", "trainer.max_steps=4", "trainer.stop_at=0.0"), tmp_path)
    assert metrics["steps"] == 1 and [h["step"] for h in metrics["val"]["history"]] == [1]
    assert metrics["test"]["last"]["step"] == 1
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 1
    again = train(
        tiny_cfg("trainer.val_every=1", "trainer.max_steps=4", "trainer.stop_at=0.0", f"trainer.resume={tmp_path}"),
        tmp_path,
    )
    assert again["steps"] == 1  # a run that reached its target is finished: resuming it trains nothing
    history = train(tiny_cfg("trainer.val_every=1", "trainer.max_steps=2"), tmp_path / "full")["val"]["history"]
    assert [h["step"] for h in history] == [1, 2]
    assert 0 < history[0]["seconds"] < history[1]["seconds"] and history[0]["eval_seconds"] > 0


def test_after_step_runs_once_per_step_outside_the_timed_loop(tiny_cfg, tmp_path, monkeypatch):
    import types

    import segbench.train.trainer as trainer_module

    # A fake clock, so nothing here depends on the machine's speed: each reading advances it by
    # 1 ms, and the hook (where segbench bench's bare steps run) takes 1,000 s of it.
    clock = {"now": 0.0}

    def perf_counter():
        clock["now"] += 0.001
        return clock["now"]

    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    calls = []

    def slow_hook(step):
        calls.append(step)
        clock["now"] += 1000.0

    metrics = train(tiny_cfg("trainer.max_steps=4", "trainer.val_every=10"), tmp_path, after_step=slow_hook)
    assert calls == [1, 2, 3, 4]
    # Counted, the hook would make it 12 images in over 3,000 s; left out, a handful of clock readings.
    assert metrics["images_per_s"] * 3000 > 3 * metrics["batch_size"] * 10


def test_gpu_run_with_fp32_channels_last_passes_the_cpu_preflight(tiny_cfg, tmp_path, monkeypatch):
    """Refused where it crashes (float32 NHWC backward on the CPU), not for a run bound for a GPU,
    whose dry run on the CPU stays NCHW."""
    from segbench.train import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "resolve_device", lambda name: torch.device("cuda"))
    prepared = prepare_module.prepare(tiny_cfg("trainer.precision=32", "trainer.channels_last=true"), tmp_path)
    assert not prepared.channels_last


def test_splits_are_disjoint_by_subject(tiny_cfg):
    from omegaconf import OmegaConf

    from segbench.data import build_datasets

    splits = build_datasets(OmegaConf.to_container(tiny_cfg().data, resolve=True))
    subjects = [{v.subject for v in part.volumes} for part in (splits.train, splits.val, splits.test)]
    assert all(subjects) and not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])


def test_best_checkpoint_is_tested_with_its_own_weights(tiny_cfg, tmp_path):
    """When the best-by-val step is not the last one, the test numbers of the two differ."""
    metrics = train(tiny_cfg("trainer.max_steps=6", "trainer.val_every=2", "optim.lr=0.05"), tmp_path)
    best, last = metrics["test"]["best"], metrics["test"]["last"]
    assert best["step"] == metrics["val"]["best"]["step"]
    if best["step"] != 6:
        assert best["loss"] != last["loss"]


def test_lr_grid_keeps_the_lr_that_wins_on_val(tiny_cfg, tmp_path):
    from segbench.analysis.runs import find_runs
    from segbench.train.lr_grid import train_with_lr_grid

    metrics = train_with_lr_grid(tiny_cfg("study.lr_grid=[1e-4,1e-2]"), tmp_path)
    scores = metrics["lr_grid"]
    assert set(scores) == {"0.0001", "0.01"}
    assert metrics["lr"] == float(max(scores, key=lambda k: (scores[k], -float(k))))
    assert metrics["selected"] == f"lr_{metrics['lr']:g}"
    runs = find_runs([str(tmp_path)])
    assert len(runs) == 1 and runs[0].path == tmp_path and "train/loss" in runs[0].scalars


@pytest.mark.parametrize("other", ["none", "group", "spade", "adain"])
def test_paired_arms_start_from_the_same_shared_weights(other):
    """The seed fixes the initial weights of every layer two arms share, whatever the norm is."""
    from segbench.models import build_model

    def weights(norm):
        torch.manual_seed(3)
        model = build_model("resunet", 4, 1, norm=norm, width=8, depth=3)
        return {k: v for k, v in model.state_dict().items() if "norm" not in k and "conditioner" not in k}

    a, b = weights("batch"), weights(other)
    shared = set(a) & set(b)
    assert len(shared) > 10
    for key in shared:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_regions_target_logs_one_dice_per_region(tiny_cfg, tmp_path):
    train(tiny_cfg("data.target=regions", "trainer.max_steps=1", "trainer.val_every=1"), tmp_path)
    assert {"val/dice_WT", "val/dice_TC", "val/dice_ET"} <= set(read_scalars(tmp_path / "tb"))


def test_scalars_read_in_write_order_whatever_the_file_names(tmp_path):
    """Two events files of one step range: the later write wins, even if its name sorts first."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard.writer import FileWriter

    # The first run (killed after a stale step 3) and its resumption; the resumption's file name sorts first.
    for name, wall, values in (("2", 10.0, {1: 1.0, 2: 2.0, 3: 9.0}), ("1", 20.0, {3: 3.0, 4: 4.0})):
        folder = tmp_path / f"w{name}"
        writer = FileWriter(str(folder))
        for step, value in values.items():
            summary = Summary(value=[Summary.Value(tag="train/loss", simple_value=value)])
            writer.add_event(Event(summary=summary, step=step, wall_time=wall + step))
        writer.close()
        next(folder.glob("events.*")).rename(tmp_path / f"events.out.tfevents.{name}.host")
    steps, values = read_scalars(tmp_path)["train/loss"]
    assert steps.tolist() == [1, 2, 3, 4] and values.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_same_seed_same_curve(tiny_cfg, tmp_path):
    curves = []
    for name in ("a", "b"):
        train(tiny_cfg("seed=7"), tmp_path / name)
        curves.append(read_scalars(tmp_path / name / "tb")["train/loss"][1])
    assert curves[0].tolist() == curves[1].tolist()


def test_thread_count_changes_numbers_by_rounding_only(tiny_cfg, tmp_path):
    """Same seed, same thread count: the same numbers, bit for bit (above). Another thread count
    sums convolutions in another order, so float32 rounding differs: within 1e-6 over these 6 steps,
    growing with training length (why the demo and the studies pin trainer.threads=1)."""
    results = {}
    for threads in (1, 2):
        metrics = train(tiny_cfg(f"trainer.threads={threads}", "trainer.max_steps=6"), tmp_path / str(threads))
        results[threads] = {
            f"{split}/{k}": v
            for split, found in (("val", metrics["val"]["final"]), ("test", metrics["test"]["best"]))
            for k, v in found.items()
            if isinstance(v, float)
        }
    assert results[1].keys() == results[2].keys()
    for key, value in results[1].items():
        assert results[2][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    torch.set_num_threads(2)  # as conftest sets it for the other tests


def test_resume_continues_the_same_curve(tiny_cfg, tmp_path):
    full = tmp_path / "full"
    uninterrupted = train(tiny_cfg("trainer.max_steps=4", "trainer.val_every=1"), full)
    part = tmp_path / "part"
    train(tiny_cfg("trainer.max_steps=2", "trainer.val_every=1"), part)
    metrics = train(tiny_cfg("trainer.max_steps=4", "trainer.val_every=1", "trainer.resume=true"), part)
    assert metrics["steps"] == 4
    steps, resumed = read_scalars(part / "tb")["train/loss"]
    assert steps.tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(read_scalars(full / "tb")["train/loss"][1]))
    # The val history and the convergence check span the whole run, the validations before the resume included.
    main = metrics["main_metric"]
    history = [(h["step"], h[main]) for h in metrics["val"]["history"]]
    assert [s for s, _ in history] == [1, 2, 3, 4]
    assert [v for _, v in history] == pytest.approx([h[main] for h in uninterrupted["val"]["history"]], abs=1e-6)
    assert metrics["convergence"]["validations"] == 4
    assert metrics["convergence"] == pytest.approx(uninterrupted["convergence"], abs=1e-6, nan_ok=True)


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
    from segbench.train import validation

    seen = []
    real_eval = validation.evaluate

    def spy(net, *args, **kwargs):
        seen.append([m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        return real_eval(net, *args, **kwargs)

    monkeypatch.setattr(validation, "evaluate", spy)
    train(tiny_cfg(), tmp_path)
    assert seen and not any(any(modes) for modes in seen)


def test_loss_auto_follows_the_targets():
    from segbench.train.losses import MultilabelLoss, SoftmaxCrossEntropy, build_loss

    assert isinstance(build_loss("auto", "multilabel"), MultilabelLoss)
    assert isinstance(build_loss("auto", "multiclass"), SoftmaxCrossEntropy)
    with pytest.raises(SegbenchError, match="loss=auto takes no options"):
        build_loss("auto", "multilabel", pos_weight=2.0)


def test_each_validation_is_logged_and_the_best_marked(tiny_cfg, tmp_path, caplog):
    with caplog.at_level("INFO", logger="segbench.train.trainer"):
        train(tiny_cfg("trainer.val_every=1"), tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("run ") and "norm=batch" in line for line in lines)
    assert any(line.startswith("data brats") and "train /" in line for line in lines)
    assert sum("val:" in line for line in lines) == 3 and any(line.endswith("(best)") for line in lines)
    assert lines[-1].startswith("best val dice_tuned") and lines[-1].endswith(f"run: {tmp_path}")


def test_overlay_is_readable_and_has_a_legend():
    from segbench.eval.evaluate import LEGEND, overlay

    images = torch.zeros(1, 4, 48, 48)
    target = torch.zeros(1, 1, 48, 48)
    logits = torch.full((1, 1, 48, 48), -9.0)
    target[..., :10, :10] = 1  # truth only
    logits[..., 20:30, 20:30] = 9  # prediction only
    target[..., 40:, 40:], logits[..., 40:, 40:] = 1, 9  # both
    out = overlay(images, target, logits, "multilabel", 4)
    scale = 6  # 48 px upscaled to at least 256
    assert out.shape == (1, 3, 48 * scale + 18, 48 * scale)
    for (y, x), (_, colour) in zip([(5, 5), (25, 25), (45, 45)], LEGEND):
        torch.testing.assert_close(out[0, :, y * scale, x * scale], 0.6 * torch.tensor(colour))
    assert out[0, :, 48 * scale :].amax() > 0.9  # the legend strip has text and swatches


def test_overlays_show_the_slices_with_most_tumour(tiny_cfg):
    from segbench.eval.evaluate import overlay

    images = torch.zeros(4, 1, 16, 16)
    target = torch.zeros(4, 1, 16, 16)
    for i, side in enumerate((0, 2, 0, 5)):  # slices 3 and 1 hold tumour, 0 and 2 none
        target[i, :, :side, :side] = 1
    out = overlay(images, target, torch.full((4, 1, 16, 16), -9.0), "multilabel", 2)
    green = (out[:, 1] > out[:, 0] + 0.2).flatten(1).sum(1)  # truth-only pixels drawn
    assert green[0] > green[1] > 0


def test_validation_overlays_come_from_the_batch_with_most_tumour(tiny_cfg, tmp_path):
    from segbench.eval.evaluate import evaluate
    from segbench.train.distributed import setup
    from segbench.train.prepare import prepare

    prepared = prepare(tiny_cfg(), tmp_path)
    model, val = prepared.model.eval(), prepared.splits.val
    _, shown = evaluate(model, val, prepared.loss_fn, setup("cpu"), 4, hd95=False)
    areas = [float(t.sum()) for _, t in torch.utils.data.DataLoader(val, batch_size=4)]
    assert float(shown[1].sum()) == max(areas) > 0 and areas[0] < max(areas)


@pytest.mark.parametrize("precision, channels_last", [("bf16-mixed", False), ("16-mixed", False), ("bf16-mixed", True)])
def test_mixed_precision_and_channels_last_train(tiny_cfg, tmp_path, precision, channels_last):
    metrics = train(tiny_cfg(f"trainer.precision={precision}", f"trainer.channels_last={channels_last}"), tmp_path)
    assert all(torch.isfinite(torch.tensor(v)) for v in read_scalars(tmp_path / "tb")["train/loss"][1])
    assert 0 <= metrics["test"]["best"]["dice"] <= 1
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ("scaler" in state) == (precision == "16-mixed")  # fp16's loss scale survives a resume
    weights = [v for k, v in state["model"].items() if v.is_floating_point()]
    assert all(w.dtype == torch.float32 for w in weights)  # autocast computes in low precision, stores fp32


def test_bf16_step_runs_the_forward_in_bfloat16():
    from segbench.models import build_model
    from segbench.train.precision import precision_for
    from segbench.train.step import train_step

    model = build_model("resunet", 2, 1, norm="batch", width=4, depth=2)
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train_step(
        model,
        torch.randn(2, 2, 16, 16),
        torch.ones(2, 1, 16, 16),
        torch.nn.BCEWithLogitsLoss(),
        opt,
        precision_for("bf16-mixed", torch.device("cpu")),
    )
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_compiled_training_matches_eager_closely(tiny_cfg, tmp_path, precision):
    """Float32 on the CPU is the case that segfaulted (inductor's channels-last conv backward)."""
    runs = {
        compiled: train(
            tiny_cfg(
                f"trainer.precision={precision}",
                "trainer.max_steps=2",
                "trainer.val_every=2",
                f"trainer.compile={str(compiled).lower()}",
            ),
            tmp_path / str(compiled),
        )
        for compiled in (False, True)
    }
    tolerance = 1e-3 if precision == "32" else 2e-2
    assert runs[True]["val"]["final"]["loss"] == pytest.approx(runs[False]["val"]["final"]["loss"], rel=tolerance)


def test_validations_spreads_that_many_evenly_over_the_budget(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("trainer.max_steps=6", "trainer.validations=3", "trainer.val_every=100"), tmp_path)
    assert [h["step"] for h in metrics["val"]["history"]] == [2, 4, 6]


@pytest.mark.parametrize("in_hardware", [True, False])
def test_bf16_where_it_is_emulated_is_said_in_the_runs_log(tiny_cfg, tmp_path, monkeypatch, caplog, in_hardware):
    from segbench.train import precision

    monkeypatch.setattr(precision, "fast_bf16", lambda device: in_hardware)
    with caplog.at_level("WARNING", logger="segbench.train.trainer"):
        train(tiny_cfg("trainer.precision=bf16-mixed", "trainer.max_steps=2", "trainer.val_every=2"), tmp_path)
    said = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(said) == (0 if in_hardware else 1)
    assert not said or "trainer.precision=auto picks float32" in said[0]
