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
    cfg = PhantomConfig(wt_volume_ml=(0.3, 0.1), wt_volume_range_ml=(0.2, 0.4), voxel_mm=1)
    (a, la), (b, lb) = make_subject(1, maps, cfg), make_subject(1, maps, cfg)
    assert np.array_equal(la, lb) and all(np.array_equal(a[m], b[m]) for m in a)
    assert set(np.unique(la)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(la))


@pytest.fixture(scope="module")
def phantom_stats(tmp_path_factory):
    """Twelve real-size (2 mm) subjects in three sites, and their data-stats figures."""
    from segbench.data.brain_phantom import write_brain_phantom
    from segbench.data.layouts import find_layout
    from segbench.data.stats import subject_stats

    root, written = write_brain_phantom(tmp_path_factory.mktemp("ph"), PhantomConfig(subjects=12, sites=3, seed=5))
    assert written == 12
    return root, [subject_stats(s) for s in find_layout(root).subjects]


def test_phantom_has_one_to_three_connected_nested_lesions(phantom_stats):
    root, rows = phantom_stats
    assert all(1 <= r["lesions"] <= 3 for r in rows)
    assert 0.2 < np.mean([r["tumour_slices"] / r["brain_slices"] for r in rows]) < 0.8
    from scipy import ndimage

    for volume in load_brats(str(root), ("t1",)):
        labels = volume.labels
        # nested as in gliomas: necrosis is wrapped in tumour, enhancing tumour is wrapped in oedema
        assert (ndimage.binary_dilation(labels == 1) <= (labels > 0)).all()
        brain = volume.images.max(axis=1) > 0
        touching_healthy = ndimage.binary_dilation(labels == 4) & (labels == 0) & brain
        # (only where a lesion is cut by the edge of the brain may the rim touch healthy tissue)
        assert touching_healthy.sum() <= 0.02 * (labels == 4).sum()


def test_phantom_sites_differ_more_than_subjects_within_a_site(phantom_stats):
    root, rows = phantom_stats
    from segbench.data.brats import read_sites

    sites = read_sites(str(root))
    assert len(set(sites.values())) == 3
    by_site = {}
    for r in rows:
        by_site.setdefault(sites[r["subject"]], []).append(r["median"]["flair"])
    within = np.mean([np.std(v) / np.mean(v) for v in by_site.values()])
    between = np.std([np.mean(v) for v in by_site.values()]) / np.mean([np.mean(v) for v in by_site.values()])
    assert between > 2 * within


def test_data_stats_command_prints_the_figures(phantom_stats):
    from tests.test_cli import segbench

    root, _ = phantom_stats
    result = segbench("data-stats", str(root))
    assert result.returncode == 0, result.stderr
    for text in ("subjects: 12; sites: 3", "lesions per subject", "whole-tumour volume", "| site0 |"):
        assert text in result.stdout


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_tumour_fraction_is_honoured(phantom_stats, fraction):
    root, _ = phantom_stats
    d = BratsSlices(str(root), "train", tumor_fraction=fraction, val_fraction=0.25, test_fraction=0.25)
    share = np.mean([d.volumes[v].tumor_slices[z] for v, z in d.index])
    assert share == pytest.approx(fraction, abs=0.03)


def test_splits_are_stratified_by_site(phantom_stats):
    root, _ = phantom_stats
    from segbench.data.brats import read_sites

    sites = read_sites(str(root))
    for split in ("val", "test"):
        d = BratsSlices(str(root), split, val_fraction=0.25, test_fraction=0.25)
        assert sorted(sites[v.subject] for v in d.volumes) == ["site0", "site1", "site2"]
        assert d.cases == [d.volumes[v].subject for v, _ in d.index]  # whole subjects, slices in order


def test_phantom_contrasts_look_like_their_modality(tiny_brats):
    volume = load_brats(str(tiny_brats), ("t1", "t1ce", "t2", "flair"))[0]
    images = volume.images.astype(np.float32)  # (Z, M, H, W)
    oedema, enhancing = volume.labels == 2, volume.labels == 4
    t1, t1ce, t2, flair = (images[:, i] for i in range(4))
    assert t1ce[enhancing].mean() > t1[enhancing].mean() * 1.3  # the rim enhances
    assert flair[oedema].mean() > flair[~oedema & (flair > 0.05)].mean()  # oedema bright on FLAIR


def test_subject_split_is_disjoint_and_complete(tiny_brats):
    ids = [{v.subject for v in BratsSlices(str(tiny_brats), split).volumes} for split in ("train", "val", "test")]
    assert all(ids) and sum(map(len, ids)) == len(set().union(*ids)) == 6


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (1.2, 0.0), (-0.1, 0.2), (0.2, 1.0)])
def test_impossible_split_fractions_are_one_line_errors(tiny_brats, val, test):
    with pytest.raises(SegbenchError, match="fraction"):
        BratsSlices(str(tiny_brats), "train", val_fraction=val, test_fraction=test)


def test_slices_have_the_chosen_channels_size_and_tumour_share(tiny_brats):
    data = BratsSlices(str(tiny_brats), "train", modalities=["flair", "t2"], size=(64, 80), tumor_fraction=0.5)
    image, target = data[0]
    assert image.shape == (2, 64, 80) and target.shape == (1, 64, 80) and target.dtype == torch.float32

    def share(fraction):
        d = BratsSlices(str(tiny_brats), "train", tumor_fraction=fraction)
        return np.mean([d.volumes[v].tumor_slices[z] for v, z in d.index])

    assert share(0.9) > share(0.5) > share(0.1)


def test_augmentation_replays_for_the_same_seed(tiny_brats):
    data = BratsSlices(str(tiny_brats), "train", augment=True)
    assert torch.equal(data[(3, 42)][0], data[(3, 42)][0])


def test_regions_follow_the_canonical_brats_codes():
    labels = np.array([[0, 1, 2, 4]])  # every layout's codes are mapped to these when a subject is read
    wt, tc, et = region_masks(labels, ("WT", "TC", "ET"))
    assert wt.tolist() == [[0, 1, 1, 1]] and tc.tolist() == [[0, 1, 0, 1]] and et.tolist() == [[0, 0, 0, 1]]


def test_missing_modality_names_the_subject(tmp_path, tiny_brats):
    root = tmp_path / "b"
    shutil.copytree(tiny_brats, root)
    subject = sorted(p for p in root.iterdir() if p.is_dir())[1]
    (subject / f"{subject.name}_flair.nii.gz").unlink()
    with pytest.raises(SegbenchError, match=f"subject {subject.name}: no flair image"):
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

    cfg = tiny_cfg(
        "model=fcn8s",
        "model.width=0.0625",
        "data=voc_phantom",
        f"data.root={voc_phantom}",
        "loss=ce",
        "data.size=[64,64]",
        "data.batch_size=2",
        "data.val_batch_size=1",
    )
    metrics = train(cfg, tmp_path)
    assert {"val/miou", "val/pixel_acc", "val/mean_acc", "val/fwiou"} <= set(read_scalars(tmp_path / "tb"))
    final = metrics["val"]["final"]
    assert 0 <= final["miou"] <= 1 and "iou_background" in final
    assert 0 <= metrics["test"]["best"]["miou"] <= 1  # VOC's own val set is the test split


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
    assert metrics["model"] == "resunet" and 0 <= metrics["test"]["best"]["dice"] <= 1


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
    with pytest.raises(SegbenchError, match="p1_0_mask.png is 5x5 but its image p1_0.png is 48x40"):
        ImageMaskFolder(str(png_folder), "train", augment=False, split_by="file", val_fraction=0.01)


def test_folder_layout_is_found_and_a_wrong_one_is_explained(png_folder):
    parallel = png_folder / "parallel"
    for sub in ("images", "masks"):
        (parallel / sub).mkdir(parents=True)
    for k, image in enumerate(sorted(png_folder.glob("p*/p*_[0-9].png"))):
        shutil.copy(image, parallel / "images" / f"case{k}.png")
        shutil.copy(image.with_name(image.stem + "_mask.png"), parallel / "masks" / f"case{k}.png")
    data = ImageMaskFolder(str(parallel), "train", augment=False, split_by="file")  # layout auto
    assert len(data) > 0 and all(m.parent.name == "masks" for _, m in data.pairs)
    with pytest.raises(SegbenchError, match="set data.layout=parallel"):
        ImageMaskFolder(str(parallel), "train", layout="suffix", split_by="file")


def test_folder_fit_resize_scales_instead_of_padding(png_folder):
    padded = ImageMaskFolder(str(png_folder), "val", augment=False, size=(80, 96), split_by="file")
    resized = ImageMaskFolder(str(png_folder), "val", augment=False, size=(80, 96), split_by="file", fit="resize")
    (_, pad_mask), (_, big_mask) = padded[0], resized[0]
    assert pad_mask.shape == big_mask.shape == (1, 80, 96)
    # The 10 x 18 square: padding keeps its area, resizing to twice the size quadruples it.
    assert int(pad_mask.sum()) == 10 * 18 and int(big_mask.sum()) == 20 * 36


def test_a_palette_masks_void_border_is_ignored_with_binary_targets(tmp_path):
    """VOC-style palette masks: 255 is "void", not foreground; a grayscale 255 stays foreground."""
    for name, mode in (("pal", "P"), ("gray", "L")):
        (tmp_path / name).mkdir()
        for k in range(4):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:8, 4:8] = 1 if mode == "P" else 255
            mask[8, :] = 255  # the border
            Image.fromarray(np.full((16, 16, 3), 100 + k, np.uint8)).save(tmp_path / name / f"c{k}.png")
            saved = Image.fromarray(mask)
            if mode == "P":
                saved.putpalette([0, 0, 0, 128, 0, 0] + [224, 224, 192] * 254)  # VOC's colours: 255 is void
            saved.save(tmp_path / name / f"c{k}_mask.png")
    pal = ImageMaskFolder(
        str(tmp_path / "pal"), "train", size=(16, 16), augment=False, val_fraction=0.25, test_fraction=0.25
    )
    target = pal[0][1]
    assert set(target.unique().tolist()) == {0.0, 1.0, 255.0} and bool((target[0, 8] == 255).all())
    gray = ImageMaskFolder(
        str(tmp_path / "gray"), "train", size=(16, 16), augment=False, val_fraction=0.25, test_fraction=0.25
    )
    assert set(gray[0][1].unique().tolist()) == {0.0, 1.0}


def test_ignored_pixels_count_in_neither_the_loss_nor_the_metrics():
    from segbench.eval.metrics import CaseMetrics
    from segbench.train.losses import MultilabelLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    marked = target.clone()
    marked[:, :, :2] = 255  # two void rows
    for kind in ("bce", "dice", "bce_dice"):
        loss = MultilabelLoss(kind)
        expected = loss(logits[:, :, 2:], target[:, :, 2:])
        torch.testing.assert_close(loss(logits, marked), expected)
    plain, masked = (CaseMetrics(("WT",), ["a", "a"], tune=False) for _ in range(2))
    plain.update(logits[:, :, 2:], target[:, :, 2:], [0, 1])
    masked.update(logits, marked, [0, 1])
    a, b = plain.compute(), masked.compute()
    assert a["dice"] == b["dice"] and a["soft_dice"] == pytest.approx(b["soft_dice"]) and a["ap"] == b["ap"]


def test_a_by_site_split_tests_on_sites_never_seen_in_training(tiny_cfg, tiny_brats, tmp_path):
    import json

    from segbench.data.brats import read_sites

    sites = read_sites(str(tiny_brats))
    train(tiny_cfg("data.test_sites=[site1]"), tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test"] and {sites[s] for s in split["test"]} == {"site1"}
    assert "site1" not in {sites[s] for s in split["train"] + split["val"]}
    assert not set(split["train"]) & set(split["val"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_sites": ["siteX"]}, "names 'siteX'; the data's sites: a, b"),
        ({"test_sites": ["b"]}, "site b has 1 subject"),
        ({"test_sites": ["a"], "folds": 2}, "two different splits"),
        ({"test_sites": ["a"], "strata": {}}, "needs the subjects' sites"),
    ],
)
def test_a_by_site_split_refuses_what_cannot_be_held_out(kwargs, message):
    from segbench.data.common import subject_split

    options = {"strata": {"s1": "a", "s2": "a", "s3": "a", "s4": "b"}, **kwargs}
    with pytest.raises(SegbenchError, match=message):
        subject_split(["s1", "s2", "s3", "s4"], "train", 0.25, 0, **options)


@pytest.mark.parametrize("odd_mode", ["L", "RGBA", "P", "I;16"])
def test_a_folder_mixing_grey_and_colour_images_is_read_as_rgb(png_folder, odd_mode):
    """One image in another mode among RGB ones: every sample has three channels, the grey one repeated."""
    target = png_folder / "p1" / "p1_0.png"
    rgb = np.asarray(Image.open(target))
    grey = rgb[..., 0].astype(np.uint16 if odd_mode == "I;16" else np.uint8)
    if odd_mode == "L":
        Image.fromarray(grey).save(target)
    elif odd_mode == "I;16":
        Image.fromarray((grey * 200).astype(np.uint16)).save(target)
    elif odd_mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(target)
    else:
        Image.fromarray(rgb).convert("P").save(target)
    for split in ("train", "val", "test"):
        data = ImageMaskFolder(str(png_folder), split, size=(40, 48), augment=False)
        assert data.in_channels == 3
        for i in range(len(data)):
            assert data[i][0].shape == (3, 40, 48)
    if odd_mode in ("L", "I;16"):
        from segbench.data.folder import read_image

        image = read_image(target, 3)
        assert np.array_equal(image[..., 0], image[..., 2])


def test_an_all_grey_folder_keeps_one_channel_at_its_bit_depth(png_folder):
    from segbench.data.folder import read_image

    for path in png_folder.rglob("p?_?.png"):
        Image.fromarray(np.asarray(Image.open(path))[..., 0].astype(np.uint16) * 257).save(path)
    data = ImageMaskFolder(str(png_folder), "train", size=(40, 48), augment=False)
    assert data.in_channels == 1 and data[0][0].shape == (1, 40, 48)
    assert read_image(next(png_folder.rglob("p1_0.png")), 1).max() > 255  # 16-bit values kept
