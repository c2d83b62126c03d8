"""BraTS 2020/2021-style NIfTI folders as 2D axial slices.

One folder per subject, ``<id>/<id>_<modality>.nii.gz`` and ``<id>/<id>_seg.nii.gz``, labels
1 necrotic core, 2 oedema, 4 (or, in BraTS 2023+, 3) enhancing tumour. The phantom from
``segbench make-data brain-phantom`` and the real challenge data are read by this same code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.data.common import SegmentationDataset, subject_split
from segbench.errors import SegbenchError, invalid_choice
from segbench.progress import progress

MODALITIES = ("t1", "t1ce", "t2", "flair")
TARGETS = {"whole_tumor": ("WT",), "regions": ("WT", "TC", "ET")}
# Which labels make up each BraTS region; 3 is how BraTS 2023 renamed enhancing tumour (4).
REGION_LABELS = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (3, 4)}
MISSING_HELP = ("make a phantom with 'segbench make-data brain-phantom --out {root}' "
                "or put real BraTS data there (see data/README.md)")


@dataclass
class Volume:
    """One subject, cached: images in [0, 1] as (Z, M, H, W) float16, labels as (Z, H, W) uint8."""

    subject: str
    images: np.ndarray
    labels: np.ndarray
    scale: np.ndarray  # (M,) z = image * scale + shift: the per-volume z-score within the brain
    shift: np.ndarray
    brain_fraction: np.ndarray  # (Z,) share of each slice inside the brain
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (Z, H, W) voxel size in mm, for HD95


def find_file(folder: Path, subject: str, suffix: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        path = folder / f"{subject}_{suffix}{ext}"
        if path.exists():
            return path
    raise SegbenchError(f"subject {subject}: no {subject}_{suffix}.nii.gz in {folder}")


def _to_axial(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS volume -> (Z, H, W) slices, anterior at the top."""
    return np.ascontiguousarray(np.flip(volume.transpose(2, 1, 0), axis=1))


BRATS_LABELS = (0, 1, 2, 3, 4)  # background, necrotic core, oedema, enhancing (3 in BraTS 2023+, else 4)


def read_nifti(path: Path, subject: str):
    """A NIfTI image and its voxels; unreadable, truncated or non-3-D files are one-line errors."""
    import nibabel as nib

    try:
        image = nib.load(path)
        voxels = np.asarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib each raise their own kinds
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegbenchError(f"subject {subject}: cannot read {path} ({reason}); is it a truncated or "
                            "corrupt .nii.gz?") from None
    if voxels.ndim != 3:
        raise SegbenchError(f"subject {subject}: {path.name} has shape {voxels.shape}; BraTS images are 3-D")
    return image, voxels


def _check_labels(seg: np.ndarray, path: Path, subject: str) -> np.ndarray:
    values = np.unique(seg)
    bad = [v for v in values.tolist() if v not in BRATS_LABELS]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise SegbenchError(f"subject {subject}: {path.name} holds label value(s) {shown}; BraTS labels are "
                            "0 (background), 1 (necrotic core), 2 (oedema), 3 or 4 (enhancing tumour)")
    return seg.astype(np.uint8)


def load_volume(folder: Path, modalities: tuple[str, ...]) -> Volume:
    """One subject's images and labels, checked: readable files, one shape, BraTS labels, finite
    voxels and no all-zero modality, each refused naming the subject and the file."""
    subject = folder.name
    seg_path = find_file(folder, subject, "seg")
    seg_img, seg = read_nifti(seg_path, subject)
    seg = _check_labels(seg, seg_path, subject)
    zooms = tuple(float(z) for z in seg_img.header.get_zooms()[:3])
    images, scale, shift = [], [], []
    for modality in modalities:
        path = find_file(folder, subject, modality)
        image = read_nifti(path, subject)[1].astype(np.float32)
        if image.shape != seg.shape:
            raise SegbenchError(f"subject {subject}: {path.name} has shape {image.shape} but "
                                f"{seg_path.name} has {seg.shape}")
        finite = np.isfinite(image)
        if not finite.all():
            raise SegbenchError(f"subject {subject}: {path.name} has {int((~finite).sum())} NaN or infinite "
                                "voxel(s); fix or drop the subject")
        if not image.any():
            raise SegbenchError(f"subject {subject}: {path.name} is all zero (a failed export?); fix or drop "
                                "the subject")
        images.append(image)
    brain = np.any(np.stack(images) > 0, axis=0)
    if not brain.any():
        raise SegbenchError(f"subject {subject}: no image has a positive voxel (is the intensity inverted?)")
    stacked = []
    for image in images:
        top = float(np.percentile(image[brain], 99.5)) or 1.0
        mean, std = float(image[brain].mean()), float(image[brain].std()) or 1.0
        stacked.append((image / top).clip(0, 1))
        scale.append(top / std)  # z-score applied to the [0, 1] image after augmentation
        shift.append(-mean / std)
    images01 = np.stack([_to_axial(v) for v in stacked], axis=1).astype(np.float16)  # (Z, M, H, W)
    return Volume(subject, images01, _to_axial(seg), np.asarray(scale, np.float32),
                  np.asarray(shift, np.float32), _to_axial(brain).mean(axis=(1, 2)), (zooms[2], zooms[1], zooms[0]))


def find_subjects(root: str) -> list[Path]:
    """Subject folders (``<id>/<id>_seg.nii.gz``) under ``root``, sorted; a clear error when there are none."""
    base = Path(root)
    if not base.is_dir():
        state = "is a file, not a folder" if base.exists() else "does not exist"
        raise SegbenchError(f"data.root={root!r} {state}; " + MISSING_HELP.format(root=root))
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [p for p in folders if any(p.glob(f"{p.name}_seg.nii*"))]
    if not folders:
        raise SegbenchError(f"data.root={root!r} holds no BraTS subject folders (<id>/<id>_seg.nii.gz); "
                            + MISSING_HELP.format(root=root))
    return folders


SITES_FILE = "sites.tsv"  # subject<TAB>site: written by the phantom, read by the split and data-stats


def read_sites(root: str) -> dict[str, str]:
    """``subject -> site`` from ``root/sites.tsv`` (written by the phantom); empty when there is none."""
    path = Path(root) / SITES_FILE
    if not path.exists():
        return {}
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    return {r[0]: r[1] for r in rows if len(r) >= 2}


def select_slices(has_tumor: np.ndarray, tumor_fraction: float | None, rng) -> np.ndarray:
    """Indices into ``has_tumor`` so that ``tumor_fraction`` of them hold tumour (None: all of them).

    Whichever kind is scarce is kept whole and the other is subsampled, so the share is honoured
    whether most slices hold tumour or few do.
    """
    tumor, healthy = np.flatnonzero(has_tumor), np.flatnonzero(~has_tumor)
    if tumor_fraction is None or len(tumor) == 0 or len(healthy) == 0:
        return np.arange(len(has_tumor))
    f = float(tumor_fraction)
    if f >= 1:
        return tumor
    if f <= 0:
        return healthy
    want_healthy = int(round(len(tumor) * (1 - f) / f))
    if want_healthy <= len(healthy):
        healthy = rng.choice(healthy, want_healthy, replace=False)
    else:
        tumor = rng.choice(tumor, int(round(len(healthy) * f / (1 - f))), replace=False)
    return np.sort(np.concatenate([tumor, healthy]))


@functools.lru_cache(maxsize=4)
def load_brats(root: str, modalities: tuple[str, ...]) -> tuple[Volume, ...]:
    """Every subject under ``root``, loaded once per process (train and val share it)."""
    folders = find_subjects(root)
    return tuple(load_volume(p, modalities) for p in progress(folders, f"loading {root}", len(folders), "subject"))


def region_masks(labels: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
    """(..., H, W) BraTS labels -> (..., K, H, W) float32 masks, one per region."""
    return np.stack([np.isin(labels, REGION_LABELS[r]) for r in regions], axis=-3).astype(np.float32)


class BratsSlices(SegmentationDataset):
    """Axial slices of a BraTS folder with multi-label sigmoid targets.

    Args:
        root: folder of subject folders.
        split: "train", "val" or "test" (by subject, stratified by site when ``sites.tsv`` names
            them; no subject is in two splits). Val and test hold every brain slice of each
            subject in order, so predictions are put back together into per-subject volumes.
        modalities: input channels, any of t1, t1ce, t2, flair.
        target: "whole_tumor" (one mask) or "regions" (WT, TC, ET).
        val_fraction: share of subjects held out for validation (model and threshold selection).
        test_fraction: share of subjects held out for the reported results.
        tumor_fraction: share of tumour-bearing training slices (None: every brain slice).
        min_brain_fraction: slices with less brain than this are skipped.
        size: (H, W) every slice is centre-cropped or zero-padded to.
        augment: flips, a small affine and intensity changes (training only).
        seed: fixes the split and the slice selection.
    """

    def __init__(self, root: str, split: str = "train", modalities=MODALITIES, target: str = "whole_tumor",
                 val_fraction: float = 0.2, test_fraction: float = 0.2, tumor_fraction: float | None = 0.5,
                 min_brain_fraction: float = 0.05, size=(96, 112), augment: bool = True, seed: int = 0):
        modalities = tuple(modalities)
        if not modalities:
            raise SegbenchError(f"data.modalities is empty; name one or more of: {', '.join(MODALITIES)}")
        for m in modalities:
            if m not in MODALITIES:
                raise invalid_choice("data.modalities", m, MODALITIES)
        if target not in TARGETS:
            raise invalid_choice("data.target", target, TARGETS)
        self.modalities, self.regions = modalities, TARGETS[target]
        if tumor_fraction is not None and not 0 <= float(tumor_fraction) <= 1:
            raise SegbenchError(f"data.tumor_fraction={tumor_fraction} must be between 0 and 1 (or null: every slice)")
        volumes = load_brats(str(root), modalities)
        sites = read_sites(str(root))
        chosen = subject_split([v.subject for v in volumes], split, val_fraction, seed, test_fraction,
                               strata=sites)
        self.volumes = [v for v in volumes if v.subject in chosen]
        rng = np.random.default_rng(seed)
        self.index = []
        for i, v in enumerate(self.volumes):
            brain = np.flatnonzero(v.brain_fraction >= min_brain_fraction)
            if split == "train":
                brain = brain[select_slices(v.labels[brain].any(axis=(1, 2)), tumor_fraction, rng)]
            self.index += [(i, int(z)) for z in brain]
        # Per sample, the case it belongs to: evaluation puts a case's slices back into one volume.
        self.cases = [self.volumes[i].subject for i, _ in self.index]
        self.spacing = self.volumes[0].spacing if self.volumes else (1.0, 1.0, 1.0)
        super().__init__(size=tuple(size), augment=augment and split == "train", pad_label=0)

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    @property
    def num_outputs(self) -> int:
        return len(self.regions)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.regions

    target_kind = "multilabel"

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int):
        v, z = self.index[i]
        volume = self.volumes[v]
        image = volume.images[z].astype(np.float32).transpose(1, 2, 0)  # (H, W, M) in [0, 1]
        return image, volume.labels[z], (volume.scale, volume.shift)

    def finish(self, image: np.ndarray, labels: np.ndarray, extra):
        scale, shift = extra
        image = image * scale + shift  # (H, W, M) z-scored per volume
        return image, region_masks(labels, self.regions)
