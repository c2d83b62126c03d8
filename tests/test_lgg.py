"""data=lgg: the Kaggle LGG layout read as it ships (on a fixture the tests write), and the real set when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench import cli
from segbench.data.lgg import LggSlices, find_patients, load_lgg
from segbench.eval.metrics import CaseMetrics, hd95
from tests.breakage import snapshot
from tests.lgg_fixture import PATIENTS, write_lgg

TINY_LGG = [
    "data=lgg",
    "model.width=4",
    "model.depth=3",
    "data.size=[32,32]",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "trainer.max_steps=2",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.log_images=0",
]
REAL_LGG = Path(os.environ.get("SEGBENCH_LGG", Path(__file__).resolve().parents[2] / "shared/data/lgg/kaggle_3m"))


@pytest.fixture(scope="module")
def lgg(tmp_path_factory) -> Path:
    return write_lgg(tmp_path_factory.mktemp("lgg") / "kaggle_3m")


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_lgg.cache_clear()  # a test that changes files must not be answered from another test's read
    yield
    load_lgg.cache_clear()


def _dataset(root, split="all", **opts):
    return LggSlices(str(root), split=split, size=(32, 32), augment=False, **opts)


def test_finds_patients_sites_and_orders_slices_by_number(lgg):
    base, patients = find_patients(str(lgg.parent))  # the folder holding kaggle_3m/ is found too
    assert base == lgg
    assert [p.subject for p in patients] == sorted(PATIENTS)
    assert {p.subject: p.site for p in patients}["TCGA_HT_7602_19951103"] == "HT"
    data = _dataset(lgg)
    for case in PATIENTS:
        numbers = [int(data.volumes[v].images[z, 0, 0, 0]) for (v, z), c in zip(data.index, data.cases) if c == case]
        # pixel (0, 0) of channel 0 holds the slice number; clipping may lift the low ones to the 1st percentile
        assert numbers == sorted(numbers) and len(numbers) == PATIENTS[case]
    assert data.summary.startswith(
        f"{lgg}: Kaggle LGG layout, 8 patients, 90 slices; institutions CS 2, DU 2, FG 2, HT 2"
    )


def test_slice_order_does_not_depend_on_the_listing_order(lgg, monkeypatch):
    forward = _dataset(lgg)
    load_lgg.cache_clear()
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(listing(self), reverse=True)))
    backward = _dataset(lgg)
    assert forward.cases == backward.cases
    for a, b in zip(forward.volumes, backward.volumes):
        np.testing.assert_array_equal(a.masks, b.masks)


def _case_hd95(dataset, shift: int) -> dict[str, float]:
    """Per-case HD95 of a prediction that is the truth one slice further on, scored through CaseMetrics."""
    metric = CaseMetrics(("tumor",), dataset.cases, dataset.spacing, hd95=True, tune=False)
    for i in range(len(dataset)):
        v, z = dataset.index[i]
        masks = dataset.volumes[v].masks
        pred = masks[min(z + shift, len(masks) - 1)]
        logits = torch.from_numpy(np.where(pred > 0, 10.0, -10.0)).float()[None, None]
        metric.update(logits, torch.from_numpy(masks[z]).float()[None, None], [i])
    return {c: v["hd95"][0] for c, v in metric.compute()["per_case"].items()}


def test_hd95_is_computed_on_the_volume_in_slice_order(lgg):
    data = _dataset(lgg)
    got = _case_hd95(data, 1)
    for v in data.volumes:
        truth = v.masks.astype(bool)
        shifted = np.concatenate([truth[1:], truth[-1:]])
        assert got[v.subject] == pytest.approx(hd95(shifted, truth, data.spacing[v.subject]))


def test_test_sites_put_only_that_institution_in_test(lgg):
    test = _dataset(lgg, split="test", test_sites=["HT"])
    train = _dataset(lgg, split="train", test_sites=["HT"])
    assert {v.site for v in test.volumes} == {"HT"}
    assert "HT" not in {v.site for v in train.volumes}
    assert set(test.sample_sites()) == {"HT"}


def test_sites_tsv_names_the_sites_of_folders_named_otherwise(tmp_path):
    root = write_lgg(tmp_path / "other", {"patient_a": 8, "patient_b": 8, "patient_c": 8, "patient_d": 8})
    (root / "sites.tsv").write_text("subject\tsite\npatient_a\tX\npatient_b\tX\npatient_c\tY\npatient_d\tY\n")
    assert {p.site for p in find_patients(str(root))[1]} == {"X", "Y"}


def test_volume_normalisation_is_a_clipped_z_score_per_patient_and_channel(lgg):
    data = LggSlices(str(lgg), split="all", size=(32, 32), augment=False, clip_percentiles=(1, 99))
    patient = sorted(PATIENTS)[2]
    files = sorted((lgg / patient).glob("*[0-9].tif"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    raw = np.stack([np.asarray(Image.open(f)) for f in files]).astype(np.float64)  # (Z, H, W, 3)
    lo, hi = np.percentile(raw, [1, 99], axis=(0, 1, 2))
    clipped = np.clip(raw, lo, hi)
    expected = (clipped - clipped.mean((0, 1, 2))) / clipped.std((0, 1, 2))
    got = np.stack([data[i][0].numpy().transpose(1, 2, 0) for i, c in enumerate(data.cases) if c == patient])
    np.testing.assert_allclose(got, expected, atol=2e-2)  # float16 storage of the clipped values


def test_slice_normalisation_z_scores_each_slice(lgg):
    data = _dataset(lgg, normalize="slice")
    image = data[5][0].numpy()
    np.testing.assert_allclose(image.reshape(3, -1).mean(1), 0, atol=1e-2)
    np.testing.assert_allclose(image.reshape(3, -1).std(1), 1, atol=1e-2)


def test_uncompressed_and_deflate_tiffs_read_the_same(lgg, tmp_path):
    raw = write_lgg(tmp_path / "raw", compression="raw")
    assert Image.open(next(raw.rglob("*_1.tif"))).info.get("compression") == "raw"
    assert Image.open(next(lgg.rglob("*_1.tif"))).info.get("compression") == "tiff_adobe_deflate"
    a, b = _dataset(lgg), _dataset(raw)
    for va, vb in zip(a.volumes, b.volumes):
        np.testing.assert_array_equal(va.images, vb.images)
        np.testing.assert_array_equal(va.masks, vb.masks)


def _break_missing_mask(root: Path) -> None:
    next(root.rglob("*_3_mask.tif")).unlink()


def _break_truncated(root: Path) -> None:
    path = next(root.rglob("*_4.tif"))
    path.write_bytes(path.read_bytes()[:200])


def _break_mask_values(root: Path) -> None:
    path = next(root.rglob("*_5_mask.tif"))
    mask = np.asarray(Image.open(path)).copy()
    mask[:4, :4] = 7
    Image.fromarray(mask, "L").save(path)


def _break_size(root: Path) -> None:
    path = next(root.rglob("*_6.tif"))
    Image.fromarray(np.zeros((24, 24, 3), np.uint8), "RGB").save(path)
    Image.fromarray(np.zeros((24, 24), np.uint8), "L").save(path.with_name(path.stem + "_mask.tif"))


BAD_FILES = [
    ("missing mask", _break_missing_mask, "has no mask"),
    ("truncated tiff", _break_truncated, "cannot be read"),
    ("mask values", _break_mask_values, "holds value(s) 7; valid: 0 (background) and 255 (tumour)"),
    ("slice size", _break_size, "is 24x24 but"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_are_one_line_exit_2_and_nothing_written(case, tmp_path, monkeypatch, capsys):
    _, breaks, fragment = case
    root = write_lgg(
        tmp_path / "kaggle_3m",
        {"TCGA_CS_1_20000101": 8, "TCGA_DU_2_20000101": 8, "TCGA_HT_3_20000101": 8, "TCGA_FG_4_20000101": 8},
    )
    breaks(root)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *TINY_LGG, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0]
    assert snapshot(tmp_path) == before


def _train(root: Path, run: Path, *extra: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", *TINY_LGG, f"data.root={root}", *extra, f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return run


def test_a_run_announces_its_data_and_writes_its_split_and_distance_unit(lgg, tmp_path):
    run = _train(lgg, tmp_path / "run", "data.test_sites=[HT]")
    first = (run / "app.log").read_text().splitlines()[0]
    assert "8 patients, 90 slices; institutions CS 2, DU 2, FG 2, HT 2" in first
    split = json.loads((run / "split.json").read_text())
    assert {s.split("_")[1] for s in split["test"]} == {"HT"}
    assert "pixels" in json.loads((run / "metrics.json").read_text())["hd95_unit"]


def test_evaluate_scores_another_folder_without_choosing_on_its_labels(lgg, tmp_path, capsys):
    run = _train(lgg, tmp_path / "run")
    other = write_lgg(
        tmp_path / "other", {"TCGA_EZ_9_20010101": 10, "TCGA_HT_8_20010101": 12}, compression="raw", seed=5
    )
    cli.main(["evaluate", str(run), "--data-root", str(other)])
    printed = capsys.readouterr().out
    assert "per-subject Dice over 2 subjects" in printed
    report = json.loads((run / "evaluations/other/evaluation.json").read_text())
    threshold = json.loads((run / "metrics.json").read_text())["val"]["best"]["threshold_tuned"]
    assert report["threshold"] == threshold and report["checkpoint"] == "best.pt"
    rows = (run / "evaluations/other/per_subject.csv").read_text().splitlines()
    assert rows[0] == "subject,site,dice,hd95,tumor_volume,predicted_volume,slices" and len(rows) == 3
    dice = [float(r.split(",")[2]) for r in rows[1:]]
    assert report["dice"]["mean"] == pytest.approx(np.mean(dice), abs=1e-5)
    assert report["dice"]["worst"] == pytest.approx(min(dice), abs=1e-5)
    # Labels are only compared with: emptying the masks changes Dice, never the predictions.
    for mask in other.rglob("*_mask.tif"):
        Image.fromarray(np.zeros_like(np.asarray(Image.open(mask))), "L").save(mask)
    load_lgg.cache_clear()
    cli.main(["evaluate", str(run), "--data-root", str(other), "--name", "empty"])
    empty = json.loads((run / "evaluations/empty/evaluation.json").read_text())
    assert empty["threshold"] == report["threshold"]
    assert [v["predicted_voxels"] for v in empty["results"]["per_case"].values()] == [
        v["predicted_voxels"] for v in report["results"]["per_case"].values()
    ]
    # A second evaluation of the same name is refused, and nothing changes.
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", str(run), "--data-root", str(other), "--name", "empty"])
    assert exit_info.value.code == 2 and snapshot(run) == before


def test_compare_reads_evaluations_paired_by_seed(lgg, tmp_path, capsys):
    other = write_lgg(tmp_path / "other", {"TCGA_EZ_9_20010101": 10, "TCGA_HT_8_20010101": 12}, seed=5)
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", "-m", *TINY_LGG, f"data.root={lgg}", "norm=none,batch",
         "seed=0,1", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    for run in runs:
        cli.main(["evaluate", str(run), "--data-root", str(other), "--name", "ext"])
    cli.main(["compare", str(sweep), "--by", "norm", "--evaluation", "ext", "--out", str(tmp_path / "cmp")])
    summary = (tmp_path / "cmp/summary.md").read_text()
    assert "evaluation `ext`" in summary and "n=2" in (tmp_path / "cmp/verdicts.txt").read_text()
    means = {r: json.loads((r / "evaluations/ext/evaluation.json").read_text())["dice"]["mean"] for r in runs}
    expected = np.mean([means[r] for r in runs if "norm=none" in r.name])
    assert f"{expected:.3f}" in summary
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(sweep), "--evaluation", "nope", "--out", str(tmp_path / "cmp2")])
    assert exit_info.value.code == 2 and "has no evaluation 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "cmp2").exists()


@pytest.mark.skipif(
    not REAL_LGG.is_dir(),
    reason=f"the Kaggle LGG set is not at {REAL_LGG} (set SEGBENCH_LGG); the repository ships no patient data",
)
def test_real_lgg_trains_a_few_steps(tmp_path):
    """The files as the set ships them, one patient of each institution (linked, not copied: reading
    all 64 patients' 2,281 slices costs half a minute and tests nothing more)."""
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    patients = sorted(p for p in REAL_LGG.iterdir() if p.is_dir())
    firsts: dict[str, Path] = {}
    for patient in patients:  # TCGA_<institution>_<patient>_<date>
        firsts.setdefault(patient.name.split("_")[1], patient)
    for patient in firsts.values():
        (root / patient.name).symlink_to(patient)
    run = _train(root, tmp_path / "run", "data.size=[64,64]")
    first = (run / "app.log").read_text().splitlines()[0]
    assert "Kaggle LGG layout" in first and f"{len(firsts)} patients" in first and "institutions" in first
    assert json.loads((run / "metrics.json").read_text())["test"]["best"]["cases"] >= 1


def _moving_blob(n: int, size: int = 32) -> np.ndarray:
    """Slice ``n``'s tumour: a disc on slices 7-12 whose centre moves with ``n``."""
    mask = np.zeros((size, size), bool)
    if n >= 7:
        yy, xx = np.mgrid[:size, :size]
        mask[(yy - 6 - 2 * (n - 7)) ** 2 + (xx - size // 2) ** 2 <= 25] = True
    return mask


def test_folder_data_stacks_slices_in_number_order_so_hd95_sees_the_blob_move(tmp_path):
    """data=folder: slices _1 .. _12 are a volume in that order. In text order (_1, _10, _11, _12, _2, ...)
    a false blob on slice 2 would sit beside slice 12's tumour and HD95 would miss how far off it is."""
    from segbench.data.folder import ImageMaskFolder

    slices = 12
    truth = np.stack([_moving_blob(n) for n in range(1, slices + 1)])
    pred = truth.copy()
    pred[1] = _moving_blob(12)  # a false positive on slice 2, five slices from the tumour
    for subject in ("a", "b"):
        (tmp_path / subject).mkdir()
        for n in range(1, slices + 1):
            Image.fromarray(np.full((32, 32), n, np.uint8)).save(tmp_path / subject / f"{subject}_{n}.png")
            Image.fromarray(truth[n - 1].astype(np.uint8) * 255).save(tmp_path / subject / f"{subject}_{n}_mask.png")
    data = ImageMaskFolder(str(tmp_path), split="all", size=(32, 32), augment=False)
    numbers = [int(np.asarray(Image.open(image))[0, 0]) for image, _ in data.pairs]
    assert numbers == list(range(1, slices + 1)) * 2
    metric = CaseMetrics(("fg",), data.cases, hd95=True, tune=False)
    for i, n in enumerate(numbers):
        logits = torch.from_numpy(np.where(pred[n - 1], 10.0, -10.0)).float()[None, None]
        metric.update(logits, torch.from_numpy(truth[n - 1]).float()[None, None], [i])
    got = metric.compute()["per_case"][str(tmp_path / "a")]["hd95"][0]
    assert got == pytest.approx(hd95(pred, truth, (1, 1, 1))) and got > 5
    text = sorted(range(slices), key=lambda k: str(k + 1))
    assert hd95(pred[text], truth[text], (1, 1, 1)) < 2  # what text order would have reported


def test_by_site_split_and_site_batches_read_the_institutions(lgg):
    from segbench.data import build_datasets
    from segbench.data.site_batches import check_site_batches

    cfg = {"name": "lgg", "root": str(lgg), "size": [32, 32], "split": "by_site", "test_sites": ["HT"],
           "batch_size": 4, "site_batches": True, "augment": False}  # fmt: skip
    splits = build_datasets(cfg)
    assert {v.site for v in splits.test.volumes} == {"HT"}
    assert "HT" not in {v.site for v in splits.train.volumes} | {v.site for v in splits.val.volumes}
    by_site = check_site_batches(splits.train, 4)
    assert set(by_site) <= {"CS", "DU", "FG"} and sum(len(i) for i in by_site.values()) == len(splits.train)
