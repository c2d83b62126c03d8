"""The BraTS preprocessing cache: built once, reused, rebuilt when a source changes, same samples as NIfTI."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from segbench.data import brats_volume
from segbench.data.brats import BratsSlices, load_brats
from segbench.data.brats_volume import VolumeCache, preprocess
from segbench.data.layouts import find_layout
from segbench.errors import SegbenchError

T1 = ("t1", "flair")


@pytest.fixture
def root(tiny_brats, tmp_path):
    """A private copy of the tiny phantom, so tests may touch its files."""
    copy = tmp_path / "brats"
    shutil.copytree(tiny_brats, copy)
    load_brats.cache_clear()
    yield copy
    load_brats.cache_clear()


def test_cached_samples_equal_samples_read_from_nifti(root, tmp_path):
    cached = BratsSlices(str(root), "train", modalities=T1, cache_dir=str(tmp_path / "cache"))
    direct = BratsSlices(str(root), "train", modalities=T1, cache=False)
    assert cached.index == direct.index and len(cached) > 10
    for i in range(0, len(cached), 7):
        (x1, y1), (x2, y2) = cached[(i, 5 + i)], direct[(i, 5 + i)]  # augmented with the same seed
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert all(v.folder is not None for v in cached.volumes) and all(v.folder is None for v in direct.volumes)


@pytest.mark.parametrize("size", [(32, 40), (17, 64), (80, 90)])  # inside, odd and larger than the volume
def test_slices_read_at_size_equal_the_full_pad_and_crop_pipeline(root, tmp_path, size):
    """The loader reads only the centre window and leaves out the pad and crop steps: the samples
    must be those of the full pipeline (whole slice, albumentations' pad + centre crop, augment)."""
    from segbench.data.common import build_transform

    ds = BratsSlices(str(root), "train", modalities=T1, size=size, cache_dir=str(tmp_path / "cache"))
    full = build_transform(size, augment=True, pad_label=0)
    assert len(ds.transform.transforms) == len(full.transforms) - 2
    for i in range(0, len(ds), 5):
        v, z = ds.index[i]
        images, labels = ds.volumes[v].slice(z)
        full.set_random_seed(3 + i)
        out = full(image=images.astype(np.float32).transpose(1, 2, 0), mask=labels)
        image, target = ds.finish(out["image"], out["mask"], (ds.volumes[v].scale, ds.volumes[v].shift))
        x, y = ds[(i, 3 + i)]
        np.testing.assert_array_equal(x.numpy(), image.transpose(2, 0, 1))
        np.testing.assert_array_equal(y.numpy(), target)


def test_cache_is_reused_and_a_changed_source_is_rebuilt(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_brats(str(root), T1, True, str(cache))
    load_brats.cache_clear()
    built = []
    real = brats_volume.preprocess
    monkeypatch.setattr(brats_volume, "preprocess", lambda *a: built.append(a[0].id) or real(*a))
    again = load_brats(str(root), T1, True, str(cache))
    assert built == []  # nothing read from NIfTI the second time
    np.testing.assert_array_equal(first[0].whole()[0], again[0].whole()[0])
    changed = root / first[1].subject / f"{first[1].subject}_flair.nii.gz"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    load_brats.cache_clear()
    load_brats(str(root), T1, True, str(cache))
    assert built == [first[1].subject]  # only the subject whose file changed


def test_whole_volume_and_boxes_match_the_uncropped_volume(root, tmp_path):
    subject = find_layout(root).subjects[0]
    volume = VolumeCache(str(root), T1, tmp_path / "cache").build(subject)
    direct = preprocess(subject, T1)
    images, labels = volume.whole()
    assert images.shape[0] == labels.shape[0] == volume.shape[0] and images.shape[2:] == labels.shape[1:]
    z0, z1, y0, y1, x0, x1 = volume.box
    assert not images[:z0].any() and not images[z1:].any() and not images[:, :, :y0].any()
    np.testing.assert_array_equal(images[z0:z1, :, y0:y1, x0:x1], direct.images)
    # A box reaching past the volume on every side is zero-padded there.
    big, big_labels = volume.read_box((-3, volume.shape[0] + 2), (-1, volume.shape[1] + 4), (-2, volume.shape[2]))
    np.testing.assert_array_equal(big[3 : 3 + volume.shape[0], :, 1 : 1 + volume.shape[1], 2:], images)
    np.testing.assert_array_equal(big_labels[3 : 3 + volume.shape[0], 1 : 1 + volume.shape[1], 2:], labels)
    assert volume.tumor_slices.tolist() == labels.any(axis=(1, 2)).tolist()


def test_pickled_volume_reopens_its_memory_map(root, tmp_path):
    volume = load_brats(str(root), T1, True, str(tmp_path / "cache"))[0]
    volume.slice(volume.shape[0] // 2)  # opens the maps
    blob = pickle.dumps(volume)
    assert len(blob) < 100_000  # the arrays are not copied into a spawned loader worker
    np.testing.assert_array_equal(pickle.loads(blob).whole()[1], volume.whole()[1])


def test_unwritable_cache_dir_is_one_line(root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SegbenchError, match="data.cache_dir=.*is a file"):
        load_brats(str(root), T1, True, str(blocker / "cache"))
    with pytest.raises(SegbenchError, match="data.cache='yes' must be true"):
        BratsSlices(str(root), "train", cache="yes")
