"""Sweeps, comparison reports and BN diagnostics on tiny settings."""

from __future__ import annotations

import csv

import pytest

from segbench.analysis.diagnose import diagnose
from segbench.train.trainer import train
from tests.conftest import TINY
from tests.test_cli import segbench


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_brats):
    out = tmp_path_factory.mktemp("sweep")
    result = segbench(
        "train",
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"data.root={tiny_brats}",
        *TINY,
        "norm=batch,group",
        "data.batch_size=2,4",
        "model.width=8",
        "trainer.max_images=8",
        f"hydra.sweep.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_sweep_members_have_short_names(sweep):
    names = [p.name.split("_", 1)[1] for p in sweep.iterdir() if p.is_dir()]
    # Only what the sweep varies: paths, constants, trainer.* and hydra.* stay in .hydra/.
    assert len(names) == 4 and {frozenset(n.split(",")) for n in names} == {
        frozenset({f"norm={norm}", f"bs={bs}"}) for norm in ("batch", "group") for bs in (2, 4)
    }


def test_two_norm_two_batch_sweep_compares(sweep):
    result = segbench("compare", str(sweep))
    assert result.returncode == 0, result.stderr
    for name in ("curves.png", "by_batch_size.png", "summary.md", "summary.csv", "predictions.png"):
        assert (sweep / name).stat().st_size > 0
    summary = (sweep / "summary.md").read_text()
    verdicts = (sweep / "verdicts.txt").read_text().splitlines()
    assert verdicts and summary.index("## Verdicts") < summary.index("| arm |")  # sentences before tables
    assert all(f"- {line}" in summary for line in verdicts) and "**(highest mean)**" not in summary
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted((r["norm"], r["batch_size"]) for r in rows) == [
        ("batch", "2"),
        ("batch", "4"),
        ("group", "2"),
        ("group", "4"),
    ]
    assert all(0 <= float(r["test_dice"]) <= 1 for r in rows)
    pairs = list(csv.DictReader((sweep / "paired.csv").open()))
    # arms differing in one key: batch vs group at each batch size, 2 vs 4 for each norm
    assert len(pairs) == 4 and {p["differs_in"] for p in pairs} == {"norm", "data.batch_size"}
    assert "sign-flip p" in (sweep / "summary.md").read_text()
    # Every run opened its own HParams session when it started: the sweep compares in TensorBoard
    # without any extra command, and compare adds no second session.
    assert not list(sweep.rglob("tb/hparams"))


def test_each_run_writes_its_hparams_session(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = next(p for p in sweep.iterdir() if p.is_dir())
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["norm"].string_value in ("batch", "group")
    assert start.hparams["data.batch_size"].number_value in (2, 4)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "val/dice_tuned" in {m.name.tag for m in experiment.metric_infos}
    # The Custom Scalars page puts train and val first, whatever the Scalars tab's alphabetical order.
    from tensorboard.plugins.custom_scalar import layout_pb2

    serialized = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(serialized)
    assert [c.title for c in layout.category][0] == "1 train and val"
    assert "train/loss" in layout.category[0].chart[0].multiline.tag


def test_submitit_local_sweep_of_two_runs(tmp_path, tiny_brats):
    result = segbench(
        "train",
        "-m",
        "hydra/launcher=local_jobs",
        "norm=none,batch",
        f"data.root={tiny_brats}",
        *TINY,
        "trainer.max_steps=2",
        "trainer.val_every=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.rglob("metrics.json"))) == 2


def test_diagnose_names_stale_statistics(tiny_cfg, tmp_path):
    import json

    train(tiny_cfg("norm.momentum=0.0", "trainer.max_steps=12", "trainer.val_every=12"), tmp_path)
    text = diagnose(str(tmp_path), batches=5)
    result = json.loads((tmp_path / "diagnose.json").read_text())
    # momentum 0 leaves every layer at exactly (0, 1): "never updated", whether or not eval suffered on this tiny run
    assert result["statistics"]["never_updated"] and "never updated" in text
    assert (tmp_path / "diagnose.json").exists() and (tmp_path / "diagnose.md").exists()


def test_diagnose_healthy_run_has_a_small_gap(tiny_cfg, tmp_path):
    import json

    train(tiny_cfg("norm.momentum=null", "trainer.max_steps=12", "trainer.val_every=12"), tmp_path)
    diagnose(str(tmp_path), batches=30)
    result = json.loads((tmp_path / "diagnose.json").read_text())
    assert abs(result["gap_precise_minus_running"]) < 0.1
    assert "stale" not in " ".join(result["verdict"])


def test_diagnose_without_bn_says_so(tiny_cfg, tmp_path):
    train(tiny_cfg("norm=group", "norm.num_groups=2"), tmp_path)
    assert "no batch-norm layers" in diagnose(str(tmp_path))


def test_batchrenorm_runs_under_precise_bn_and_diagnose(tiny_cfg, tmp_path):
    train(tiny_cfg("norm=batchrenorm", "trainer.precise_bn_batches=2"), tmp_path)
    text = diagnose(str(tmp_path), batches=2)
    assert "running statistics" in text


def test_diagnose_scores_running_statistics_even_when_the_run_evaluated_with_batch_ones(tiny_cfg, tmp_path):
    import json

    train(
        tiny_cfg("norm.eval_stats=batch", "norm.momentum=0.0", "trainer.max_steps=6", "trainer.val_every=6"), tmp_path
    )
    diagnose(str(tmp_path), batches=3)
    result = json.loads((tmp_path / "diagnose.json").read_text())
    # momentum 0 keeps the running statistics at (0, 1): scored with them, the net differs from batch statistics
    assert result["running"] != result["batch"]


def test_diagnose_on_test_uses_the_threshold_chosen_on_val(tiny_cfg, tmp_path):
    import json

    train(tiny_cfg(), tmp_path)
    diagnose(str(tmp_path), batches=2, split="test")
    result = json.loads((tmp_path / "diagnose.json").read_text())
    assert result["split"] == "test" and result["metric"] == "dice"


def test_run_names_keep_what_the_sweep_varies_even_under_trainer(monkeypatch):
    from segbench.train.app import run_name

    overrides = ["experiment=x", "trainer.precision=bf16-mixed", "seed=1", "data.root=/a/b", "norm=batch"]
    monkeypatch.setenv("SEGBENCH_SWEPT_KEYS", "trainer.precision,seed,data.root")
    assert run_name(overrides) == "trainer.precision=bf16-mixed,seed=1"  # a path never names a folder
    monkeypatch.delenv("SEGBENCH_SWEPT_KEYS")
    assert run_name(overrides) == "seed=1,norm=batch"


def test_compare_without_the_runs_data_still_compares(sweep, tmp_path, monkeypatch):
    from segbench.analysis.compare import compare
    from segbench.errors import SegbenchError

    def gone(*args, **kwargs):
        raise SegbenchError("data.root='/moved' does not exist")

    monkeypatch.setattr("segbench.data.build_datasets", gone)
    out = compare([str(sweep)], str(tmp_path / "report"))
    assert "(no prediction grid: data.root='/moved' does not exist)" in (out / "summary.md").read_text()
    assert not (out / "predictions.png").exists() and (out / "curves.png").exists()


@pytest.mark.parametrize(
    "scores, state, expected",
    [
        (
            {"running": 0.40, "batch": 0.80, "batch_1": 0.70, "precise": 0.82},
            {
                "never_updated": True,
                "momentum": 0.001,
                "steps": 600,
                "initial_share_left": 0.55,
                "updates_run": False,
                "eval_stats": ["running"],
            },
            "never_updated",
        ),
        (
            {"running": 0.60, "batch": 0.80, "batch_1": 0.70, "precise": 0.82},
            {
                "never_updated": False,
                "momentum": 0.001,
                "steps": 600,
                "initial_share_left": 0.55,
                "updates_run": True,
                "eval_stats": ["running"],
            },
            "too_slow",
        ),
        (
            {"running": 0.60, "batch": 0.80, "batch_1": 0.70, "precise": 0.82},
            {
                "never_updated": False,
                "momentum": 0.1,
                "steps": 600,
                "initial_share_left": 0.0,
                "updates_run": True,
                "eval_stats": ["running"],
            },
            "stale",
        ),
        (
            {"running": 0.85, "batch": 0.70, "batch_1": 0.50, "precise": 0.86},
            {
                "never_updated": False,
                "momentum": 0.1,
                "steps": 600,
                "initial_share_left": 0.0,
                "updates_run": True,
                "eval_stats": ["batch"],
            },
            "batch_stats_at_eval",
        ),
        (
            {"running": 0.85, "batch": 0.84, "batch_1": 0.80, "precise": 0.86},
            {
                "never_updated": False,
                "momentum": 0.1,
                "steps": 600,
                "initial_share_left": 0.0,
                "updates_run": True,
                "eval_stats": ["running"],
            },
            "healthy",
        ),
        (
            {"running": 0.82, "batch": 0.84, "batch_1": 0.80, "precise": 0.86},
            {
                "never_updated": False,
                "momentum": 0.1,
                "steps": 600,
                "initial_share_left": 0.0,
                "updates_run": True,
                "eval_stats": ["running"],
            },
            "unclear",
        ),
        # The same small gap, but the statistics still hold 55 % of their start: the state names the cause.
        (
            {"running": 0.90, "batch": 0.93, "batch_1": 0.91, "precise": 0.94},
            {
                "never_updated": False,
                "momentum": 0.001,
                "steps": 600,
                "initial_share_left": 0.55,
                "updates_run": True,
                "eval_stats": ["running"],
            },
            "too_slow",
        ),
    ],
)
def test_diagnose_names_each_cause_from_its_evidence(scores, state, expected):
    from segbench.analysis.diagnose import name_cause

    cause, lines = name_cause("dice", scores, state, 0.0, [{"mean_shift": 1.0, "log_var_ratio": 0.5}], 4)
    assert cause == expected and lines


def test_never_updated_statistics_stay_at_their_initial_values(tiny_cfg, tmp_path):
    import torch

    from segbench.analysis.diagnose import statistics_state

    train(tiny_cfg("norm=batch_tf1", "norm.update_stats=false", "trainer.max_steps=4", "trainer.val_every=4"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all(bool(torch.all(m == 0)) for m in means)
    from segbench.models import ResUNet

    model = ResUNet(4, 1, width=4, depth=3, norm="batch", norm_options={"momentum": 0.001, "update_stats": False})
    assert statistics_state(model, 600)["never_updated"]
    assert abs(statistics_state(model, 600)["initial_share_left"] - 0.999**600) < 1e-9
