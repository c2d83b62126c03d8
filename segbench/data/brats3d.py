"""BraTS as 3-D: training patches drawn from whole volumes, whole volumes for val and test.

Read from the same preprocessing cache as the 2-D slices (``segbench.data.brats_volume``), split
by subject the same way. Training follows nnU-Net's sampler: a share of the patches is centred
on a tumour voxel (foreground oversampling, since tumour is ~1-2 % of a volume), the rest
anywhere in the head; then 3-D flips, a small rotation and scaling, and intensity changes.
Val and test items are whole subjects, predicted by sliding windows of the patch size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from segbench.data.brats import MODALITIES, TARGETS, load_brats, parse_spacing, read_sites, region_masks
from segbench.data.common import SPLITS, subject_split
from segbench.errors import SegbenchError, invalid_choice


class BratsVolumes(Dataset):
    """Patches (train) or whole subjects (val, test) of a BraTS folder, with multi-label targets.

    Args:
        root, split, modalities, target, val_fraction, test_fraction, seed, cache, cache_dir, spacing:
            as ``BratsSlices``.
        patch: (D, H, W) of a training patch, and of the sliding window at evaluation.
        foreground_fraction: share of training patches centred on a tumour voxel.
        patches_per_subject: training items per subject and epoch.
        augment: flips, rotation about the axial axis (±``rotate`` degrees), scaling (``scale``)
            and per-modality intensity scale and shift (training only).
        overlap: overlap of neighbouring sliding windows at evaluation.
        window_batch: windows per forward pass at evaluation.
    """

    target_kind = "multilabel"
    spatial_dims = 3

    def __init__(
        self,
        root: str,
        split: str = "train",
        modalities=MODALITIES,
        target: str = "whole_tumor",
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        patch=(48, 64, 64),
        foreground_fraction: float = 0.33,
        patches_per_subject: int = 8,
        augment: bool = True,
        rotate: float = 10.0,
        scale=(0.9, 1.1),
        overlap: float = 0.5,
        window_batch: int = 2,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        folds: int | None = None,
        fold: int = 0,
        spacing=None,
        test_sites=None,
    ):
        if split not in SPLITS:
            raise invalid_choice("split", split, SPLITS)
        modalities = tuple(modalities)
        for m in modalities or ("(none)",):
            if m not in MODALITIES:
                raise invalid_choice("data.modalities", m, MODALITIES)
        if target not in TARGETS:
            raise invalid_choice("data.target", target, TARGETS)
        patch = tuple(int(p) for p in patch)
        if len(patch) != 3 or min(patch) < 1:
            raise SegbenchError(f"data.patch={list(patch)} must be three positive sizes (D, H, W)")
        if not 0 <= foreground_fraction <= 1:
            raise SegbenchError(f"data.foreground_fraction={foreground_fraction} must be between 0 and 1")
        if not 0 <= overlap < 1:
            raise SegbenchError(f"data.overlap={overlap} must be at least 0 and below 1")
        if int(patches_per_subject) < 1 or int(window_batch) < 1:
            raise SegbenchError("data.patches_per_subject and data.window_batch must be at least 1")
        self.modalities, self.regions, self.split = modalities, TARGETS[target], split
        volumes = load_brats(str(root), modalities, cache, cache_dir, parse_spacing(spacing))
        self.site_of = read_sites(str(root))  # subject -> site; empty when the data names no sites
        chosen = subject_split(
            [v.subject for v in volumes],
            split,
            val_fraction,
            seed,
            test_fraction,
            strata=self.site_of,
            folds=folds,
            fold=fold,
            test_sites=test_sites,
        )
        self.volumes = [v for v in volumes if v.subject in chosen]
        self.window = self.size = patch
        self.overlap, self.window_batch = float(overlap), int(window_batch)
        self.foreground, self.per_subject = float(foreground_fraction), int(patches_per_subject)
        self.augment = bool(augment) and split == "train"
        self.rotate, self.scale = float(rotate), tuple(float(s) for s in scale)
        self.seed = seed
        self.whole = split != "train"
        # Val and test: one item per subject; per-case metrics see the whole volume at once.
        self.cases = [v.subject for v in self.volumes] if self.whole else None
        # Each case's own voxel size (Z, H, W) in mm, for its HD95.
        self.spacing = {v.subject: v.spacing for v in self.volumes}
        self._tumour: dict[int, np.ndarray] = {}

    in_channels = property(lambda self: len(self.modalities))
    num_outputs = property(lambda self: len(self.regions))
    class_names = property(lambda self: self.regions)

    def __len__(self) -> int:
        return len(self.volumes) * (1 if self.whole else self.per_subject)

    def sample_sites(self) -> list[str]:
        """Each item's site ("" where sites.tsv does not name its subject); item i is volume i mod n."""
        return [self.site_of.get(self.volumes[i % len(self.volumes)].subject, "") for i in range(len(self))]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        volume = self.volumes[index % len(self.volumes)]
        if self.whole:
            images, labels = volume.whole()
        else:
            rng = np.random.default_rng([self.seed, index] if seed is None else [self.seed, index, seed])
            images, labels = volume.read_box(*self._patch_box(index % len(self.volumes), volume, rng))
        image = torch.from_numpy(images.astype(np.float32)).transpose(0, 1)  # (M, D, H, W) in [0, 1]
        target = torch.from_numpy(region_masks(labels, self.regions)).transpose(0, 1)  # (D, K, H, W) -> (K, D, H, W)
        if self.augment:
            image, target = self._augment(image, target, rng)
        scale = torch.from_numpy(volume.scale).view(-1, 1, 1, 1)
        shift = torch.from_numpy(volume.shift).view(-1, 1, 1, 1)
        return image * scale + shift, target  # z-scored per volume, as the 2-D slices

    def _tumour_voxels(self, v: int, volume) -> np.ndarray:
        """Up to 20,000 tumour voxel positions of subject ``v`` in whole-volume coordinates (cached)."""
        if v not in self._tumour:
            found = np.argwhere(np.asarray(volume.labels) > 0)
            if len(found) > 20_000:
                found = found[np.random.default_rng(v).choice(len(found), 20_000, replace=False)]
            self._tumour[v] = found + np.asarray(volume.box[::2])
        return self._tumour[v]

    def _patch_box(self, v: int, volume, rng):
        """The patch's box: centred on a tumour voxel with probability ``foreground_fraction``,
        else anywhere that keeps its centre inside the stored head box."""
        tumour = self._tumour_voxels(v, volume) if rng.random() < self.foreground else np.empty((0, 3))
        if len(tumour):
            centre = tumour[rng.integers(len(tumour))]
        else:
            centre = [rng.integers(lo, max(hi, lo + 1)) for lo, hi in zip(volume.box[::2], volume.box[1::2])]
        return [(int(c) - p // 2, int(c) - p // 2 + p) for c, p in zip(centre, self.window)]

    def _augment(self, image: torch.Tensor, target: torch.Tensor, rng):
        """Flips on each axis, a rotation about the axial axis and a scaling (one affine resampling,
        nearest for the masks), then per-modality intensity scale and shift."""
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                image, target = image.flip(axis), target.flip(axis)
        if rng.random() < 0.5:
            angle = np.deg2rad(rng.uniform(-self.rotate, self.rotate))
            zoom = 1.0 / rng.uniform(*self.scale)
            cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
            # affine_grid's coordinates run (x, y, z) = (W, H, D): rotate in the axial (W, H) plane.
            theta = torch.tensor([[cos, -sin, 0, 0], [sin, cos, 0, 0], [0, 0, zoom, 0]], dtype=torch.float32)
            grid = F.affine_grid(theta[None], [1, 1, *image.shape[1:]], align_corners=False)
            image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
            target = F.grid_sample(target[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (image.shape[0], 1, 1, 1)).astype(np.float32))
        offset = torch.from_numpy(rng.uniform(-0.05, 0.05, (image.shape[0], 1, 1, 1)).astype(np.float32))
        return image * gain + offset * (image > 0), target
