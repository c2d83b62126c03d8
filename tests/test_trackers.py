"""Trackers: TensorBoard always, MLflow beside it read back by MLflow's own client, a tracker of one's own."""

from __future__ import annotations

import json
import logging

import pytest

from segbench.errors import SegbenchError
from segbench.train import trackers
from segbench.train.trackers import Tracker, check_trackers, register_tracker
from segbench.train.trainer import train


def test_mlflow_run_reads_back_with_params_step_metrics_test_results_and_checkpoints(tiny_cfg, tmp_path):
    pytest.importorskip("mlflow", reason="logger=mlflow is an extra: pip install 'segbench[mlflow]'")
    from mlflow.tracking import MlflowClient

    metrics = train(tiny_cfg("logger=mlflow"), tmp_path)
    record = json.loads((tmp_path / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"  # in the run folder, no server
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert run.data.params["norm.name"] == "batch" and run.data.params["seed"] == "0"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3]
    assert run.data.metrics["zz_test_best/dice"] == pytest.approx(metrics["test"]["best"]["dice"])
    assert run.data.metrics["val/dice"] == pytest.approx(metrics["val"]["final"]["dice"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "checkpoints"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    }
    assert (tmp_path / "tb").is_dir()  # TensorBoard stays, beside MLflow


def test_a_resumed_run_continues_its_mlflow_run(tiny_cfg, tmp_path):
    pytest.importorskip("mlflow", reason="logger=mlflow is an extra: pip install 'segbench[mlflow]'")
    from mlflow.tracking import MlflowClient

    train(tiny_cfg("logger=mlflow", "trainer.max_steps=2", "trainer.val_every=2"), tmp_path)
    first = json.loads((tmp_path / "mlflow.json").read_text())["run_id"]
    train(
        tiny_cfg("logger=mlflow", "trainer.max_steps=4", "trainer.val_every=2", f"trainer.resume={tmp_path}"), tmp_path
    )
    record = json.loads((tmp_path / "mlflow.json").read_text())
    assert record["run_id"] == first
    client = MlflowClient(record["tracking_uri"])
    steps = sorted(m.step for m in client.get_metric_history(first, "train/loss"))
    assert steps == [1, 2, 3, 4] and client.get_run(first).info.status == "FINISHED"


def test_a_tracker_of_ones_own_is_a_short_class(tiny_cfg, tmp_path, monkeypatch):
    seen = []

    class ListTracker(Tracker):
        def scalar(self, tag, value, step):
            seen.append((tag, step))

        def finish(self, metrics):
            seen.append(("finish", metrics["steps"]))

    monkeypatch.setattr(trackers, "TRACKERS", dict(trackers.TRACKERS))
    register_tracker("list", ListTracker)
    train(tiny_cfg("logger.names=[tensorboard,list]"), tmp_path)
    assert ("train/loss", 3) in seen and ("val/dice", 3) in seen and seen[-1] == ("finish", 3)


@pytest.mark.parametrize(
    "names, expected",
    [
        ("[tensorboard,wandb]", "logger.names='wandb' is not valid"),
        ("[mlflow]", "must include tensorboard"),
    ],
)
def test_bad_tracker_lists_are_one_line(tiny_cfg, names, expected):
    with pytest.raises(SegbenchError, match=expected):
        check_trackers(tiny_cfg(f"logger.names={names}"))


def test_a_missing_tracker_package_names_the_install_line(tiny_cfg, monkeypatch):
    monkeypatch.setitem(trackers.NEEDS, "mlflow", ("no_such_module_segbench", "pip install 'segbench[mlflow]'"))
    with pytest.raises(
        SegbenchError, match=r"needs the no_such_module_segbench package: pip install 'segbench\[mlflow\]'"
    ):
        check_trackers(tiny_cfg("logger=mlflow"))


def test_runs_of_older_versions_read_under_the_current_tag_names(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from segbench.analysis.runs import read_scalars

    writer = SummaryWriter(str(tmp_path))
    for step in (1, 2):
        writer.add_scalar("train_eval/loss", 0.5 / step, step)
        writer.add_scalar("test_best/dice", 0.8, step)
        writer.add_scalar("val/dice", 0.7, step)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss_eval_mode", "zz_test_best/dice", "val/dice"}
    assert scalars["train/loss_eval_mode"][1].tolist() == [0.5, 0.25]


def test_a_resumed_runs_curve_drops_what_the_stopped_process_logged_after_it_without_a_warning(tmp_path, caplog):
    from torch.utils.tensorboard import SummaryWriter

    from segbench.analysis.runs import read_scalars

    stopped = SummaryWriter(str(tmp_path))
    for step in (1, 2, 3, 4):  # checkpoint at step 2, killed after step 4
        stopped.add_scalar("val/dice", 0.1 * step, step)
    stopped.close()
    resumed = SummaryWriter(str(tmp_path), purge_step=3)  # as the trainer opens it after a resume at step 2
    resumed.add_scalar("val/dice", 0.9, 3)
    resumed.close()
    with caplog.at_level(logging.DEBUG):
        steps, values = read_scalars(tmp_path)["val/dice"]
    assert steps.tolist() == [1, 2, 3] and values.tolist() == pytest.approx([0.1, 0.2, 0.9])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "swept, expected",
    [
        ("", ["norm", "data.batch_size", "seed", "model", "optim.lr"]),
        ("norm,seed", ["norm", "seed", "data.batch_size", "model", "optim.lr"]),
        ("optim.weight_decay,data.batch_size,seed", ["optim.weight_decay", "data.batch_size", "seed", "norm", "model"]),
    ],
)
def test_the_hparams_table_lists_the_swept_settings_first(tiny_cfg, monkeypatch, swept, expected):
    from segbench.train.hparams import hparams_of, shown_keys

    monkeypatch.setenv("SEGBENCH_SWEPT_KEYS", swept)
    settings = hparams_of(tiny_cfg(), 1)
    assert shown_keys(settings) == expected
    assert {"loss", "data", "optim", "model.width"} <= set(settings)  # still in the session, for filters


@pytest.mark.parametrize("norm", ["batch", "switchable"])
def test_tensorboard_opens_on_train_and_val(tiny_cfg, tmp_path, norm):
    """Time Series orders its sections by name and opens the first two (checked in a browser, see
    scripts/tensorboard_first_screen.sh): those must be train and val, whatever else a run logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_cfg(f"norm={norm}"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    sections = sorted({tag.split("/", 1)[0] for kind in ("scalars", "images") for tag in events.Tags()[kind]})
    assert sections[:2] == ["train", "val"], sections
    assert any(s.startswith("zz_test") for s in sections)
