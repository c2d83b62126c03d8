"""Per-subject Dice and HD95 against the BraTS challenge's own code (panoptica) and against MONAI.

panoptica pins numpy<2.3 and rich<14, which this environment's other packages outgrow, so it runs in
an environment of its own: ``make panoptica-env`` builds ``.venv-panoptica`` (or point
``SEGBENCH_PANOPTICA_PYTHON`` at a Python that has it); without one these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.eval import metrics as M

ROOT = Path(__file__).resolve().parents[1]
PANOPTICA_PYTHON = os.environ.get("SEGBENCH_PANOPTICA_PYTHON") or str(ROOT / ".venv-panoptica" / "bin" / "python")
SPACINGS = [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (1.5, 0.9375, 0.9375)]

# Run by panoptica's Python: DSC and HD95 of every pair in the .npz, as panoptica computes them.
SCRIPT = """
import json, sys
import numpy as np
from panoptica.metrics import Metric
data = np.load(sys.argv[1])
out = []
for i in range(int(data["n"])):
    ref, pred, spacing = data[f"truth{i}"], data[f"pred{i}"], tuple(data[f"spacing{i}"])
    out.append({"dsc": float(Metric.DSC(reference_arr=ref, prediction_arr=pred)),
                "hd95": float(Metric.HD95(reference_arr=ref, prediction_arr=pred, voxelspacing=spacing))})
print(json.dumps(out))
"""


def _blobs(seed: int, shape=(10, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.05
    pred = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.05
    return pred, truth


def _pairs():
    return [(*_blobs(seed), spacing) for seed in range(4) for spacing in SPACINGS]


def _dice(pred, truth) -> float:
    return 2 * (pred & truth).sum() / (pred.sum() + truth.sum())


@pytest.fixture(scope="module")
def panoptica_results(tmp_path_factory):
    if not Path(PANOPTICA_PYTHON).is_file():
        pytest.skip(
            f"panoptica's own environment is missing ({PANOPTICA_PYTHON}): make panoptica-env, "
            "or set SEGBENCH_PANOPTICA_PYTHON"
        )
    found = subprocess.run([PANOPTICA_PYTHON, "-c", "import panoptica"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"{PANOPTICA_PYTHON} cannot import panoptica: {found.stderr.strip().splitlines()[-1]}")
    path = tmp_path_factory.mktemp("panoptica") / "pairs.npz"
    arrays = {"n": len(_pairs())}
    for i, (pred, truth, spacing) in enumerate(_pairs()):
        arrays.update({f"pred{i}": pred, f"truth{i}": truth, f"spacing{i}": np.array(spacing)})
    np.savez(path, **arrays)
    done = subprocess.run([PANOPTICA_PYTHON, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dice_and_brats_hd95_equal_panoptica(panoptica_results):
    for (pred, truth, spacing), theirs in zip(_pairs(), panoptica_results):
        assert _dice(pred, truth) == pytest.approx(theirs["dsc"], rel=1e-12)
        assert M.hd95(pred, truth, spacing, "brats") == pytest.approx(theirs["hd95"], rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_monai_hd95_equals_monai(seed, spacing):
    from monai.metrics import compute_hausdorff_distance

    pred, truth = _blobs(seed)
    theirs = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None].float(),
        torch.from_numpy(truth)[None, None].float(),
        percentile=95,
        spacing=list(spacing),
    )
    assert M.hd95(pred, truth, spacing, "monai") == pytest.approx(float(theirs), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_pooled_hd95_lies_between_the_two_directed_percentiles(seed):
    """A quantile of a pooled sample lies between the two samples' quantiles: "brats" <= "monai"."""
    pred, truth = _blobs(seed)
    assert M.hd95(pred, truth, (1, 1, 1), "brats") <= M.hd95(pred, truth, (1, 1, 1), "monai") + 1e-12
    assert M.hd95(truth, truth, (1, 1, 1), "brats") == M.hd95(truth, truth, (1, 1, 1), "monai") == 0.0


def test_conventions_share_the_brats_empty_mask_rules_and_the_config_offers_them():
    from segbench.schema import CHOICE_RULES

    empty, blob = np.zeros((155, 240, 240), bool), np.zeros((155, 240, 240), bool)
    blob[70:80, 100:120, 100:120] = True
    for convention in M.HD95_CONVENTIONS:
        assert M.hd95(empty, empty, (1, 1, 1), convention) == 0.0
        assert M.hd95(empty, blob, (1, 1, 1), convention) == pytest.approx(373.13, abs=0.01)
    assert set(CHOICE_RULES["trainer.hd95"]) == set(M.HD95_CONVENTIONS)
    with pytest.raises(ValueError, match="choose one of: monai, brats"):
        M.hd95(blob, blob, (1, 1, 1), "medpy")


def test_a_run_reports_hd95_in_the_convention_it_was_asked_for(tiny_cfg, tmp_path):
    from segbench.train.trainer import train

    runs = {c: train(tiny_cfg(f"trainer.hd95={c}"), tmp_path / c) for c in M.HD95_CONVENTIONS}
    assert runs["brats"]["hd95_convention"] == "brats" and runs["monai"]["hd95_convention"] == "monai"
    assert runs["brats"]["test"]["best"]["dice"] == runs["monai"]["test"]["best"]["dice"]  # the same run otherwise
    assert runs["brats"]["test"]["best"]["hd95"] <= runs["monai"]["test"]["best"]["hd95"] + 1e-9
