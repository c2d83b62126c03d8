"""Results that cannot mislead: mask values declared as ignored, runs of unlike metrics, empty truth."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from segbench import cli
from segbench.data.folder import ImageMaskFolder
from segbench.eval.metrics import CaseMetrics
from tests.breakage import snapshot


def _palette_folder(root, values=(0, 1, 2)):
    root.mkdir()
    for k in range(4):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = values[1]
        mask[10:12, 2:6] = values[2]
        mask[8, :] = 255  # VOC's border
        Image.fromarray(np.full((16, 16, 3), 100 + k, np.uint8)).save(root / f"c{k}.png")
        Image.fromarray(mask).save(root / f"c{k}_mask.png")
    return root


@pytest.mark.parametrize("how", ["ignore_index", "class_map"])
def test_a_declared_ignore_value_is_ignored_with_class_maps(tmp_path, how):
    root = _palette_folder(tmp_path / "voc")
    opts = (
        {"classes": {0: 0, 1: 1, 2: 2}, "ignore_index": 255}
        if how == "ignore_index"
        else {"classes": {0: 0, 1: 1, 2: 2, 255: "ignore"}}
    )
    data = ImageMaskFolder(
        str(root), "train", size=(16, 16), augment=False, val_fraction=0.25, test_fraction=0.25, **opts
    )
    target = data[0][1]
    assert data.target_kind == "multiclass" and bool((target[8] == 255).all())
    assert set(target.unique().tolist()) == {0, 1, 2, 255}


def test_without_a_declared_ignore_value_255_is_refused_with_the_way_out(tmp_path):
    from segbench.errors import SegbenchError

    root = _palette_folder(tmp_path / "voc")
    with pytest.raises(SegbenchError, match="holds value.s. 255.*data.ignore_index"):
        ImageMaskFolder(str(root), "train", size=(16, 16), classes={0: 0, 1: 1, 2: 2})


def test_a_binary_folder_ignores_its_declared_value(tmp_path):
    root = _palette_folder(tmp_path / "bin", values=(0, 1, 1))
    data = ImageMaskFolder(
        str(root), "train", size=(16, 16), augment=False, val_fraction=0.25, test_fraction=0.25, ignore_index=255
    )
    target = data[0][1]
    assert set(target.unique().tolist()) == {0.0, 1.0, 255.0} and bool((target[0, 8] == 255).all())


def test_cases_without_tumour_give_undefined_auroc_with_a_reason_and_no_warning():
    metric = CaseMetrics(("WT",), ["a", "b"], tune=True)
    logits = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would fail here
        metric.update(logits, torch.zeros(2, 1, 8, 8), [0, 1])
        out = metric.compute()
    assert out["auroc"] is None and out["ap"] is None and "need both classes" in out["auroc_ap_undefined"]
    assert out["dice"] == pytest.approx(np.mean([v["dice"][0] for v in out["per_case"].values()]))
    json.dumps(out, allow_nan=False)  # no bare NaN reaches metrics.json


def test_compare_refuses_runs_that_share_no_test_metric(finished_run, tmp_path, capsys):
    dice_run, miou_run = tmp_path / "a", tmp_path / "b"
    shutil.copytree(finished_run, dice_run)
    shutil.copytree(finished_run, miou_run)
    metrics = json.loads((miou_run / "metrics.json").read_text())
    metrics["report_metric"], metrics["main_metric"] = "miou", "miou"
    metrics["test"] = {"best": {"miou": 0.5}, "last": {"miou": 0.5}}
    (miou_run / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(tmp_path)
    for order in ([dice_run, miou_run], [miou_run, dice_run]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["compare", *map(str, order), "--out", str(tmp_path / "cmp")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1
        assert "different test metrics (dice: 1 run(s)" in err[0] and "miou: 1 run(s)" in err[0]
    with pytest.raises(SystemExit):
        cli.main(["compare", str(dice_run), str(miou_run), "--metric", "dice", "--out", str(tmp_path / "cmp")])
    assert "has no test 'dice'" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_an_arm_label_names_a_config_group_by_its_name():
    from segbench.analysis.arms import _config_value
    from segbench.analysis.runs import Run

    run = Run(path=None, metrics={}, config={"data": {"name": "brats", "root": "/x"}}, overrides={})
    assert _config_value(run, "data") == "brats"


def test_a_second_sweep_into_a_running_sweeps_folder_changes_nothing_of_it(tiny_brats, tmp_path):
    import subprocess
    import sys
    import time

    from tests.conftest import TINY

    sweep = tmp_path / "sweep"
    base = [
        sys.executable,
        "-m",
        "segbench",
        "train",
        "-m",
        f"data.root={tiny_brats}",
        *[o for o in TINY if not o.startswith("trainer.max_steps")],
        f"hydra.sweep.dir={sweep}",
    ]
    winner = subprocess.Popen(
        [*base, "trainer.max_steps=40", "norm=none,batch", "seed=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 240
        while not list(sweep.glob("*/checkpoints/last.pt")) and time.monotonic() < end and winner.poll() is None:
            time.sleep(0.1)
        members = sorted(p for p in sweep.iterdir() if p.is_dir())
        before = {m: (m / ".hydra/config.yaml").read_bytes() for m in members}
        loser = subprocess.run(
            [*base, "trainer.max_steps=40", "norm=none,batch", "seed=2"], capture_output=True, text=True, timeout=240
        )
        assert loser.returncode == 2 and "in use by another segbench run" in loser.stderr
        assert "hydra.sweep.dir" in loser.stderr and len(loser.stderr.strip().splitlines()) == 1
        assert {m: (m / ".hydra/config.yaml").read_bytes() for m in members} == before
        _, err = winner.communicate(timeout=300)
        assert winner.returncode == 0, err
    finally:
        if winner.poll() is None:
            winner.kill()
    for member in sweep.iterdir():
        if member.is_dir():
            metrics = json.loads((member / "metrics.json").read_text())
            assert metrics["seed"] == 1 and "seed: 1" in (member / ".hydra/config.yaml").read_text()
            assert (member / "app.log").read_text().count("run ") >= 1
    assert not (sweep / ".segbench.lock").exists()  # released at the sweep's end
