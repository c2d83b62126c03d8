"""Brain-MRI folders read as they ship: BraTS 2021 and 2023 naming, MSD Task01, nnU-Net raw.

Tiny synthetic subjects are written in each layout by the same writers the phantom uses; every
layout must give the very same cached volumes, whatever the orientation or case of the files.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segbench.data.brats import load_brats
from segbench.data.brats_volume import read_subject
from segbench.data.layout_writers import subject_id, write_index, write_subject
from segbench.data.layouts import ED, ET, LAYOUTS, MODALITIES, NCR, find_layout, label_map, modality_of
from segbench.errors import SegbenchError
from segbench.eval.metrics import CaseMetrics, hd95

SHAPE = (10, 12, 6)  # (X, Y, Z)


def _subject(seed: int):
    rng = np.random.default_rng(seed)
    images = {m: rng.integers(1, 1000, SHAPE).astype(np.int16) for m in MODALITIES}
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:8, 4:9, 1:5] = ED
    labels[4:7, 5:8, 2:4] = ET
    labels[5, 6, 2:4] = NCR
    return images, labels


def _write(layout: str, root, n: int = 2, affine=np.eye(4), transform=lambda a: a):
    root.mkdir(parents=True, exist_ok=True)
    sids = [subject_id(layout, "Case", i) for i in range(n)]
    for i, sid in enumerate(sids):
        images, labels = _subject(i)
        write_subject(layout, root, sid, {m: transform(v) for m, v in images.items()}, transform(labels), affine)
    write_index(layout, root, sids)
    return root


def _volumes(root, tmp_path, **kw):
    load_brats.cache_clear()
    return load_brats(str(root), MODALITIES, True, str(tmp_path / "cache"), **kw)


def _same(a, b):
    for va, vb in zip(a, b, strict=True):
        (ia, la), (ib, lb) = va.whole(), vb.whole()
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        assert va.spacing == vb.spacing


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_same_subjects(layout, tmp_path):
    reference = _volumes(_write("brats2021", tmp_path / "ref"), tmp_path)
    root = _write(layout, tmp_path / layout)
    found = find_layout(root)
    assert found.name == layout and len(found.subjects) == 2
    assert f"{layout} layout, 2 subjects, modalities t1, t1ce, t2, flair" in found.summary()
    volumes = _volumes(root, tmp_path)
    _same(reference, volumes)
    assert set(np.unique(volumes[0].whole()[1])) == {0, NCR, ED, ET}  # canonical codes whatever was stored


def test_lps_and_permuted_copies_give_identical_samples(tmp_path):
    ras = _volumes(_write("brats2021", tmp_path / "ras", affine=np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path)
    lps_affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    lps_affine[:3, 3] = [2.0 * (SHAPE[0] - 1), 2.0 * (SHAPE[1] - 1), 0]
    lps = _write("brats2021", tmp_path / "lps", affine=lps_affine, transform=lambda a: a[::-1, ::-1].copy())
    _same(ras, _volumes(lps, tmp_path))
    # Stored (Y, X, Z): the affine's first two columns swapped says so.
    swap = np.array([[0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    permuted = _write("brats2021", tmp_path / "yxz", affine=swap, transform=lambda a: a.transpose(1, 0, 2).copy())
    _same(ras, _volumes(permuted, tmp_path))
    assert ras[0].spacing == (3.0, 2.0, 2.0)  # (Z, H, W)


def test_file_names_match_whatever_their_case(tmp_path):
    reference = _volumes(_write("brats2023", tmp_path / "ref"), tmp_path)
    root = _write("brats2023", tmp_path / "upper")
    for path in sorted(root.glob("*/*.nii.gz")):
        path.rename(path.with_name(path.name.upper().replace(".NII.GZ", ".nii.gz")))
    _same(reference, _volumes(root, tmp_path))


def test_a_folder_without_a_label_map_is_reported_not_silently_dropped(tmp_path):
    root = _write("brats2021", tmp_path / "b", n=3)
    sid = subject_id("brats2021", "Case", 2)
    (root / sid / f"{sid}_seg.nii.gz").unlink()
    found = find_layout(root)
    assert len(found.subjects) == 2 and f"skipped 1 without a label map ({sid})" in found.summary()


def test_mixed_voxel_sizes_are_refused_in_one_line_or_resampled(tmp_path):
    root = tmp_path / "mixed"
    _write("brats2021", root, n=1, affine=np.eye(4))
    images, labels = _subject(1)
    sid = subject_id("brats2021", "Thick", 0)
    write_subject("brats2021", root, sid, images, labels, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(
        SegbenchError,
        match=rf"subject {sid} has voxels of 1 x 1 x 2 mm but .* has 1 x 1 x 1 mm; "
        r"resample .* data.spacing",
    ):
        _volumes(root, tmp_path)
    volumes = _volumes(root, tmp_path, spacing=(1.0, 1.0, 1.0))
    assert [v.spacing for v in volumes] == [(1.0, 1.0, 1.0)] * 2
    assert volumes[1].shape[0] == 2 * SHAPE[2]  # 6 slices of 2 mm became 12 of 1 mm


def test_hd95_uses_each_case_own_spacing():
    truth = torch.zeros(2, 1, 6, 6)
    truth[:, 0, 2:4, 2:4] = 1
    pred = torch.zeros_like(truth)
    pred[:, 0, 3:5, 2:4] = 1  # one row off in every slice: 1 mm at 1 mm voxels, 5 mm at 5 mm
    spacing = {"thin": (1.0, 1.0, 1.0), "thick": (1.0, 5.0, 1.0)}
    metrics = CaseMetrics(("WT",), ["thin"] * 2 + ["thick"] * 2, spacing=spacing, tune=False)
    logits = (pred * 2 - 1) * 10
    metrics.update(torch.cat([logits, logits]), torch.cat([truth, truth]), [0, 1, 2, 3])
    per_case = metrics.compute()["per_case"]
    expected = {c: hd95(pred[:, 0].numpy() > 0, truth[:, 0].numpy() > 0, s) for c, s in spacing.items()}
    assert expected == {"thin": 1.0, "thick": 5.0}
    assert {case: row["hd95"][0] for case, row in per_case.items()} == expected


@pytest.mark.parametrize(
    "labels, expected",
    [
        (
            {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},  # MSD Task01
            {0: 0, 1: ED, 2: NCR, 3: ET},
        ),
        ({"background": 0, "NCR": 1, "SNFH": 2, "ET": 3}, {0: 0, 1: NCR, 2: ED, 3: ET}),  # nnU-Net, BraTS 2023 names
        (
            {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},  # nnU-Net regions
            {0: 0, 1: ED, 2: NCR, 3: ET},
        ),
    ],
)
def test_dataset_json_labels_in_each_form(labels, expected):
    assert label_map(labels) == expected


@pytest.mark.parametrize(
    "name, modality",
    [
        ("FLAIR", "flair"),
        ("t2f", "flair"),
        ("T1w", "t1"),
        ("t1n", "t1"),
        ("t1gd", "t1ce"),
        ("T1c", "t1ce"),
        ("T1-Gd", "t1ce"),
        ("T2w", "t2"),
    ],
)
def test_channel_names_map_to_the_four_modalities(name, modality):
    assert modality_of(name) == modality


def test_codes_outside_a_layouts_convention_are_refused(tmp_path):
    root = _write("brats2023", tmp_path / "b", n=1)
    seg = next(root.glob("*/*-seg.nii.gz"))
    img = nib.load(seg)
    nib.save(nib.Nifti1Image(np.where(np.asarray(img.dataobj) == 3, 4, img.dataobj).astype(np.uint8), img.affine), seg)
    with pytest.raises(
        SegbenchError,
        match=r"holds label value\(s\) 4; the brats2023 layout's labels are 0 \(background\), 1 \(necrotic\), "
        r"2 \(oedema\), 3 \(enhancing\)",
    ):
        read_subject(find_layout(root).subjects[0], MODALITIES)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda meta: meta.pop("channel_names"), "names no channels"),
        (lambda meta: meta["labels"].update({"cyst": 4}), "label 'cyst' \\(value 4\\) is none of"),
        (lambda meta: meta["channel_names"].update({"0": "DWI"}), "channel 'DWI' is none of the modalities"),
    ],
)
def test_a_bad_dataset_json_is_one_line(tmp_path, change, message):
    root = _write("nnunet", tmp_path / "n", n=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegbenchError, match=message):
        find_layout(root)


def test_an_unreadable_dataset_json_and_an_empty_folder_are_one_line(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "dataset.json").write_text("{not json")
    with pytest.raises(SegbenchError, match="cannot be read as JSON"):
        find_layout(tmp_path / "j")
    (tmp_path / "e").mkdir()
    with pytest.raises(SegbenchError, match="holds no subjects in a known layout"):
        find_layout(tmp_path / "e")
