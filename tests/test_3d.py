"""3-D: the ResUNet and the norm slot on volumes, patches from the cache, whole-volume evaluation
by sliding windows (checked against MONAI's), and a run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segbench.errors import SegbenchError
from segbench.eval.inference import sliding_window
from segbench.eval.metrics import CaseMetrics
from segbench.models import ResUNet
from segbench.nn import NORMS
from segbench.nn.norms import has_3d_form
from tests.conftest import SMALL
from tests.test_cli import segbench

NORM_KW = {
    "spade": {"hidden": 4},
    "group": {"num_groups": 2},
    "ws_group": {"num_groups": 2},
    "evonorm_s0": {"num_groups": 2},
}


@pytest.mark.filterwarnings("ignore:norm=syncbatch outside")
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_resunet3d_with_every_norm_or_a_one_line_refusal(norm):
    torch.manual_seed(0)
    if not has_3d_form(norm):
        with pytest.raises(SegbenchError, match=f"norm={norm} has no 3-D form"):
            ResUNet(2, 1, width=4, depth=2, norm=norm, dims=3)
        return
    net = ResUNet(2, 3, width=4, depth=2, norm=norm, norm_options=NORM_KW.get(norm), dims=3).train()
    x = torch.randn(2, 2, 4, 6, 8)
    y = net(x)
    assert y.shape == (2, 3, 4, 6, 8)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
    assert all(not isinstance(m, torch.nn.Conv2d) for m in net.modules())


@pytest.mark.parametrize(
    "shape, window, overlap, batch",
    [
        ((1, 2, 20, 27, 33), (8, 12, 16), 0.5, 2),
        ((2, 2, 10, 9, 40), (12, 8, 16), 0.25, 3),  # smaller than the window on two axes: padded
        ((1, 2, 16, 16, 16), (16, 16, 16), 0.5, 1),
        ((1, 2, 6, 30, 20), (8, 8, 8), 0.6, 4),
        ((1, 1, 37, 21), (16, 16), 0.5, 2),  # 2-D works the same way
    ],
)
def test_sliding_window_matches_monai(shape, window, overlap, batch):
    inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if len(window) == 3 else torch.nn.Conv2d
    net = torch.nn.Sequential(conv(shape[1], 3, 3, padding=1), torch.nn.Tanh(), conv(3, 2, 3, padding=1)).eval()
    x = torch.randn(*shape)
    ours = sliding_window(net, x, window, overlap, batch)
    theirs = inferers.sliding_window_inference(
        x, window, batch, net, overlap=overlap, mode="gaussian", sigma_scale=0.125
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_whole_volume_metrics_equal_slice_by_slice():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(1, 2, 6, 10, 12)).astype(np.float32))
    target = torch.from_numpy((rng.random((1, 2, 6, 10, 12)) > 0.7).astype(np.float32))
    whole = CaseMetrics(("WT", "TC"), ["a"], spacing=(2.0, 1.0, 1.0), tune=False)
    whole.update(logits, target, [0])
    slices = CaseMetrics(("WT", "TC"), ["a"] * 6, spacing=(2.0, 1.0, 1.0), tune=False)
    slices.update(logits[0].transpose(0, 1), target[0].transpose(0, 1), list(range(6)))
    a, b = whole.compute(), slices.compute()
    for key in ("dice", "hd95", "soft_dice", "auroc"):
        assert a[key] == pytest.approx(b[key]), key


def test_patches_oversample_tumour_and_eval_items_are_whole_subjects(tiny_brats):
    from segbench.data.brats import BratsSlices
    from segbench.data.brats3d import BratsVolumes

    train = BratsVolumes(str(tiny_brats), "train", patch=(16, 24, 24), foreground_fraction=1.0, augment=True)
    images, target = train[(0, 7)]
    assert images.shape == (4, 16, 24, 24) and target.shape == (1, 16, 24, 24)
    assert np.mean([train[(i, i)][1].any().item() for i in range(len(train))]) > 0.9  # centred on tumour
    anywhere = BratsVolumes(str(tiny_brats), "train", patch=(16, 24, 24), foreground_fraction=0.0)
    assert np.mean([anywhere[i][1].any().item() for i in range(len(anywhere))]) < 0.9
    val = BratsVolumes(str(tiny_brats), "val")
    volume = val.volumes[0]
    images, target = val[0]
    assert images.shape == (4, *volume.shape) and val.cases == [v.subject for v in val.volumes]
    np.testing.assert_array_equal(target[0].numpy() > 0, volume.whole()[1] > 0)
    for split in ("train", "val", "test"):  # the same subjects as the 2-D slices
        assert {v.subject for v in BratsVolumes(str(tiny_brats), split).volumes} == {
            v.subject for v in BratsSlices(str(tiny_brats), split).volumes
        }
    np.testing.assert_array_equal(train[(3, 11)][0].numpy(), train[(3, 11)][0].numpy())  # seeded


def test_3d_run_end_to_end_with_whole_volume_test_metrics(tiny_brats, tmp_path):
    run = tmp_path / "run"
    small = [o for o in SMALL if not o.startswith(("model.", "data.size"))]
    result = segbench(
        "train",
        "model=resunet3d",
        "data=brats3d",
        "norm=group",
        "norm.num_groups=2",
        f"data.root={tiny_brats}",
        *small,
        "model.width=4",
        "model.depth=2",
        "data.batch_size=2",
        "data.patch=[16,24,24]",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    per_case = metrics["test"]["best"]["per_case"]
    assert len(per_case) >= 1 and all(len(c["dice"]) == 1 and len(c["hd95"]) == 1 for c in per_case.values())
    compared = segbench("compare", str(run), "--out", str(tmp_path / "report"))
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert (tmp_path / "report" / "predictions.png").stat().st_size > 0  # whole volumes shown at a slice


def test_a_norm_without_a_3d_form_is_one_line_before_a_folder(tiny_brats, tmp_path):
    result = segbench(
        "train",
        "model=resunet3d",
        "data=brats3d",
        "norm=switchable",
        f"data.root={tiny_brats}",
        "trainer.max_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2 and "norm=switchable has no 3-D form" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model, data, words", [("resunet3d", "brats", "use a 2-D model"), ("resunet", "brats3d", "use model=resunet3d")]
)
def test_model_and_data_of_different_dims_are_one_line(tiny_brats, tmp_path, model, data, words):
    result = segbench(
        "train",
        f"model={model}",
        f"data={data}",
        f"data.root={tiny_brats}",
        "trainer.max_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
