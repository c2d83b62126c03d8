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


def _find(folder: Path, subject: str, suffix: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        path = folder / f"{subject}_{suffix}{ext}"
        if path.exists():
            return path
    raise SegbenchError(f"subject {subject}: no {subject}_{suffix}.nii.gz in {folder}")


def _to_axial(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS volume -> (Z, H, W) slices, anterior at the top."""
    return np.ascontiguousarray(np.flip(volume.transpose(2, 1, 0), axis=1))


def load_volume(folder: Path, modalities: tuple[str, ...]) -> Volume:
    import nibabel as nib

    subject = folder.name
    seg_path = _find(folder, subject, "seg")
    seg = np.asarray(nib.load(seg_path).dataobj)
    images, scale, shift = [], [], []
    for modality in modalities:
        path = _find(folder, subject, modality)
        image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        if image.shape != seg.shape:
            raise SegbenchError(f"subject {subject}: {path.name} has shape {image.shape} but "
                                f"{seg_path.name} has {seg.shape}")
        images.append(image)
    brain = np.any(np.stack(images) > 0, axis=0)
    if not brain.any():
        raise SegbenchError(f"subject {subject}: every image is zero")
    stacked = []
    for image in images:
        top = float(np.percentile(image[brain], 99.5)) or 1.0
        mean, std = float(image[brain].mean()), float(image[brain].std()) or 1.0
        stacked.append((image / top).clip(0, 1))
        scale.append(top / std)  # z-score applied to the [0, 1] image after augmentation
        shift.append(-mean / std)
    images01 = np.stack([_to_axial(v) for v in stacked], axis=1).astype(np.float16)  # (Z, M, H, W)
    return Volume(subject, images01, _to_axial(seg.astype(np.uint8)), np.asarray(scale, np.float32),
                  np.asarray(shift, np.float32), _to_axial(brain).mean(axis=(1, 2)))


@functools.lru_cache(maxsize=4)
def load_brats(root: str, modalities: tuple[str, ...]) -> tuple[Volume, ...]:
    """Every subject under ``root``, loaded once per process (train and val share it)."""
    base = Path(root)
    if not base.is_dir():
        raise SegbenchError(f"data.root={root!r} does not exist; " + MISSING_HELP.format(root=root))
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [p for p in folders if any(p.glob(f"{p.name}_seg.nii*"))]
    if not folders:
        raise SegbenchError(f"data.root={root!r} holds no BraTS subject folders (<id>/<id>_seg.nii.gz); "
                            + MISSING_HELP.format(root=root))
    return tuple(load_volume(p, modalities) for p in folders)


def region_masks(labels: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
    """(..., H, W) BraTS labels -> (..., K, H, W) float32 masks, one per region."""
    return np.stack([np.isin(labels, REGION_LABELS[r]) for r in regions], axis=-3).astype(np.float32)


class BratsSlices(SegmentationDataset):
    """Axial slices of a BraTS folder with multi-label sigmoid targets.

    Args:
        root: folder of subject folders.
        split: "train" or "val" (a subject-level split; no subject is in both).
        modalities: input channels, any of t1, t1ce, t2, flair.
        target: "whole_tumor" (one mask) or "regions" (WT, TC, ET).
        val_fraction: share of subjects held out for validation.
        tumor_fraction: share of tumour-bearing slices among those used (None: every brain slice).
        min_brain_fraction: slices with less brain than this are skipped.
        size: (H, W) every slice is centre-cropped or zero-padded to.
        augment: flips, a small affine and intensity changes (training only).
        seed: fixes the split and the slice selection.
    """

    def __init__(self, root: str, split: str = "train", modalities=MODALITIES, target: str = "whole_tumor",
                 val_fraction: float = 0.2, tumor_fraction: float | None = 0.5, min_brain_fraction: float = 0.05,
                 size=(96, 112), augment: bool = True, seed: int = 0):
        modalities = tuple(modalities)
        for m in modalities:
            if m not in MODALITIES:
                raise invalid_choice("data.modalities", m, MODALITIES)
        if target not in TARGETS:
            raise invalid_choice("data.target", target, TARGETS)
        self.modalities, self.regions = modalities, TARGETS[target]
        volumes = load_brats(str(root), modalities)
        chosen = subject_split([v.subject for v in volumes], split, val_fraction, seed)
        self.volumes = [v for v in volumes if v.subject in chosen]
        rng = np.random.default_rng(seed)
        self.index = [(i, z) for i, v in enumerate(self.volumes)
                      for z in self._select_slices(v, tumor_fraction, min_brain_fraction, rng)]
        super().__init__(size=tuple(size), augment=augment and split == "train", pad_label=0)

    @staticmethod
    def _select_slices(volume: Volume, tumor_fraction, min_brain, rng) -> list[int]:
        brain = np.flatnonzero(volume.brain_fraction >= min_brain)
        has_tumor = volume.labels[brain].any(axis=(1, 2))
        tumor, healthy = brain[has_tumor], brain[~has_tumor]
        if tumor_fraction is None or len(tumor) == 0:
            return brain.tolist()
        keep = min(len(healthy), int(round(len(tumor) * (1 - tumor_fraction) / max(tumor_fraction, 1e-6))))
        return sorted(tumor.tolist() + rng.choice(healthy, keep, replace=False).tolist())

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
