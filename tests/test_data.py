"""Readers and generators: BraTS layout, subject split, VOC phantom through torchvision, image folders."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data.brain_phantom import PhantomConfig, make_subject
from segbench.data.brats import BratsSlices, load_brats, region_masks
from segbench.data.folder import ImageMaskFolder
from segbench.data.voc_phantom import write_voc_phantom
from segbench.errors import SegbenchError
from segbench.train.trainer import train


def test_phantom_is_deterministic_and_has_every_tumour_label():
    maps = np.random.default_rng(0).random((4, 20, 24, 18)).astype(np.float32)
    maps /= maps.sum(0, keepdims=True)
    maps[3] = np.pad(np.ones((12, 16, 10)), ((4, 4), (4, 4), (4, 4)))  # a white-matter block for seeds
    cfg = PhantomConfig(tumor_radius_mm=(6.0, 8.0))
    (a, la), (b, lb) = make_subject(1, maps, cfg), make_subject(1, maps, cfg)
    assert np.array_equal(la, lb) and all(np.array_equal(a[m], b[m]) for m in a)
    assert set(np.unique(la)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(la))


def test_phantom_contrasts_look_like_their_modality(tiny_brats):
    volume = load_brats(str(tiny_brats), ("t1", "t1ce", "t2", "flair"))[0]
    images = volume.images.astype(np.float32)  # (Z, M, H, W)
    oedema, enhancing = volume.labels == 2, volume.labels == 4
    t1, t1ce, t2, flair = (images[:, i] for i in range(4))
    assert t1ce[enhancing].mean() > t1[enhancing].mean() * 1.3  # the rim enhances
    assert flair[oedema].mean() > flair[~oedema & (flair > 0.05)].mean()  # oedema bright on FLAIR


def test_subject_split_is_disjoint_and_complete(tiny_brats):
    train_set, val_set = BratsSlices(str(tiny_brats), "train"), BratsSlices(str(tiny_brats), "val")
    train_ids = {v.subject for v in train_set.volumes}
    val_ids = {v.subject for v in val_set.volumes}
    assert train_ids and val_ids and not train_ids & val_ids and len(train_ids | val_ids) == 4


def test_slices_have_the_chosen_channels_size_and_tumour_share(tiny_brats):
    data = BratsSlices(str(tiny_brats), "train", modalities=["flair", "t2"], size=(64, 80), tumor_fraction=0.5)
    image, target = data[0]
    assert image.shape == (2, 64, 80) and target.shape == (1, 64, 80) and target.dtype == torch.float32

    def share(fraction):
        d = BratsSlices(str(tiny_brats), "train", tumor_fraction=fraction)
        return np.mean([d.volumes[v].labels[z].any() for v, z in d.index])

    # The share is reached where there are enough healthy slices, and never below "every slice".
    assert share(0.9) >= 0.85 and share(0.9) > share(0.5) >= share(None)


def test_augmentation_replays_for_the_same_seed(tiny_brats):
    data = BratsSlices(str(tiny_brats), "train", augment=True)
    assert torch.equal(data[(3, 42)][0], data[(3, 42)][0])


def test_regions_follow_the_brats_convention_for_labels_4_and_3():
    labels = np.array([[0, 1, 2, 3, 4]])
    wt, tc, et = region_masks(labels, ("WT", "TC", "ET"))
    assert wt.tolist() == [[0, 1, 1, 1, 1]] and tc.tolist() == [[0, 1, 0, 1, 1]] and et.tolist() == [[0, 0, 0, 1, 1]]


def test_missing_modality_names_the_subject(tmp_path, tiny_brats):
    root = tmp_path / "b"
    shutil.copytree(tiny_brats, root)
    subject = sorted(p for p in root.iterdir() if p.is_dir())[1]
    (subject / f"{subject.name}_flair.nii.gz").unlink()
    with pytest.raises(SegbenchError, match=f"subject {subject.name}: no {subject.name}_flair"):
        load_brats(str(root), ("flair",))


def test_label_3_is_read_as_enhancing(tmp_path, tiny_brats):
    root = tmp_path / "b23"
    shutil.copytree(tiny_brats, root)
    for seg in root.glob("*/*_seg.nii.gz"):
        img = nib.load(seg)
        labels = np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(np.where(labels == 4, 3, labels).astype(np.uint8), img.affine), seg)
    data = BratsSlices(str(root), "train", target="regions", augment=False)
    targets = torch.stack([data[i][1] for i in range(len(data))])
    assert targets[:, 2].sum() > 0  # ET found from label 3


@pytest.fixture(scope="module")
def voc_phantom(tmp_path_factory):
    return write_voc_phantom(tmp_path_factory.mktemp("voc"), images=8)


def test_voc_phantom_loads_with_torchvision_directly(voc_phantom):
    from torchvision.datasets import VOCSegmentation

    data = VOCSegmentation(str(voc_phantom), year="2012", image_set="train", download=False)
    image, mask = data[0]
    assert image.mode == "RGB" and mask.mode == "P"
    values = set(np.unique(np.asarray(mask)))
    assert 0 in values and 255 in values and values - {0, 255}
    assert len(VOCSegmentation(str(voc_phantom), year="2012", image_set="val")) == 2


def test_fcn8s_trains_on_the_voc_phantom_and_logs_miou(tiny_cfg, voc_phantom, tmp_path):
    from segbench.analysis.runs import read_scalars

    cfg = tiny_cfg("model=fcn8s", "model.width=0.0625", "data=voc_phantom", f"data.root={voc_phantom}",
                   "loss=ce", "data.size=[64,64]", "data.batch_size=2", "data.val_batch_size=1")
    metrics = train(cfg, tmp_path)
    assert {"val/miou", "val/pixel_acc", "val/mean_acc", "val/fwiou"} <= set(read_scalars(tmp_path / "tb"))
    assert 0 <= metrics["final"]["miou"] <= 1 and "iou_background" in metrics["final"]


@pytest.fixture
def png_folder(tmp_path):
    rng = np.random.default_rng(0)
    for patient in ("p1", "p2", "p3"):
        (tmp_path / patient).mkdir()
        for k in range(3):
            image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            mask[10:20, 12:30] = 255
            Image.fromarray(image).save(tmp_path / patient / f"{patient}_{k}.png")
            Image.fromarray(mask).save(tmp_path / patient / f"{patient}_{k}_mask.png")
    return tmp_path


def test_folder_of_png_pairs_trains(tiny_cfg, png_folder, tmp_path):
    cfg = tiny_cfg("data=folder", f"data.root={png_folder}", "data.size=[32,48]", "data.batch_size=2")
    metrics = train(cfg, tmp_path / "run")
    assert metrics["model"] == "resunet" and 0 <= metrics["final"]["dice"] <= 1


def test_folder_multiclass_mapping(png_folder):
    data = ImageMaskFolder(str(png_folder), "train", classes={0: 0, 255: 2}, size=(40, 48), augment=False)
    image, target = data[0]
    assert data.target_kind == "multiclass" and data.num_outputs == 3
    assert image.shape == (3, 40, 48) and set(target.unique().tolist()) == {0, 2}


def test_folder_image_without_mask_is_named(png_folder):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png_folder / "p1" / "orphan.png")
    with pytest.raises(SegbenchError, match="orphan.png has no mask"):
        ImageMaskFolder(str(png_folder), "train")


def test_folder_size_mismatch_is_named(png_folder):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(png_folder / "p1" / "p1_0_mask.png")
    data = ImageMaskFolder(str(png_folder), "train", augment=False, split_by="file", val_fraction=0.01)
    with pytest.raises(SegbenchError, match="p1_0.png is .* but its mask p1_0_mask.png"):
        [data[i] for i in range(len(data))]
