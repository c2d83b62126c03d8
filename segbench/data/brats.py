"""Brain-MRI NIfTI folders (BraTS 2018-2025, MSD Task01, nnU-Net raw) as 2D axial slices.

The layout is found by itself (``segbench.data.layouts``) and every subject is read through the
preprocessing cache (``segbench.data.brats_volume``): reoriented to RAS from its affine, labels
mapped to BraTS 2021's codes. The phantom from ``segbench make-data brain-phantom`` and the real
challenge data are read by this same code.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from segbench.data.brats_volume import Volume, VolumeCache, preprocess
from segbench.data.common import FITS, SegmentationDataset, subject_split
from segbench.data.layouts import MODALITIES, Subject, find_layout
from segbench.errors import SegbenchError, invalid_choice
from segbench.io import check_writable
from segbench.progress import progress

log = logging.getLogger(__name__)
TARGETS = {"whole_tumor": ("WT",), "regions": ("WT", "TC", "ET")}
# Which canonical labels (segbench.data.layouts: 1 necrotic, 2 oedema, 4 enhancing) make up each region.
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def find_subjects(root: str) -> list[Subject]:
    """The subjects under ``root`` in whichever layout it ships (``segbench.data.layouts``), sorted;
    a clear error when there are none."""
    return find_layout(root).subjects


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
def load_brats(
    root: str,
    modalities: tuple[str, ...],
    cache: bool = True,
    cache_dir: str | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> tuple[Volume, ...]:
    """Every subject under ``root``, opened once per process (train, val and test share it).

    With ``cache`` the subjects are memory-mapped from the preprocessing cache, building what is
    missing or stale first (see ``segbench.data.brats_volume``); without it every subject is read
    from NIfTI into memory, as for a one-off look at a small folder. ``spacing`` (x, y, z mm):
    every subject resampled to it; None keeps each subject's grid, and subjects whose voxel sizes
    differ are refused (a 2-D net would mix millimetre scales, silently).
    """
    layout = find_layout(root)
    log.info("%s", layout.summary())
    subjects = layout.subjects
    if not cache:
        volumes = [
            preprocess(s, modalities, spacing) for s in progress(subjects, f"loading {root}", len(subjects), "subject")
        ]
        return tuple(check_spacing(volumes))
    store = VolumeCache(root, modalities, cache_dir, spacing)
    volumes = [store.open(s) for s in subjects]
    stale = [i for i, v in enumerate(volumes) if v is None]
    if stale:
        check_writable(store.folder, "data.cache_dir")
        log.info(
            "caching %d of %d subjects of %s in %s (once; later runs reuse it)",
            len(stale),
            len(subjects),
            root,
            store.folder,
        )
    for i in progress(stale, f"caching {root}", len(stale), "subject"):
        volumes[i] = store.build(subjects[i])
    return tuple(check_spacing(volumes))


SPACING_TOLERANCE = 0.02  # relative: 0.9375 mm beside 0.94 mm is one grid, 1 mm beside 5 mm is not


def check_spacing(volumes: list[Volume]) -> list[Volume]:
    """``volumes`` when they share one voxel size; else one line naming a subject that differs."""
    first = volumes[0]
    for v in volumes[1:]:
        if not np.allclose(v.spacing, first.spacing, rtol=SPACING_TOLERANCE):
            zyx = lambda s: " x ".join(f"{x:g}" for x in s[::-1])  # noqa: E731 - shown as NIfTI's x, y, z
            raise SegbenchError(
                f"subject {v.subject} has voxels of {zyx(v.spacing)} mm but {first.subject} has "
                f"{zyx(first.spacing)} mm; resample every subject to one grid with "
                "data.spacing=[x,y,z] (mm), e.g. data.spacing=[1,1,1]"
            )
    return volumes


def parse_spacing(value) -> tuple[float, float, float] | None:
    """``data.spacing``: null, or three positive millimetre sizes (x, y, z)."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(np.isfinite(v) and v > 0 for v in out):
        raise SegbenchError(f"data.spacing={value!r} must be null or three positive sizes in mm, e.g. [1,1,1]")
    return out


def region_masks(labels: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
    """(..., H, W) BraTS labels -> (..., K, H, W) float32 masks, one per region."""
    table = np.zeros((256, len(regions)), np.float32)  # label -> membership of each region, one lookup
    for k, region in enumerate(regions):
        table[list(REGION_LABELS[region]), k] = 1
    return np.moveaxis(table[labels], -1, -3)


def _centre_window(full: int, want: int) -> tuple[int, int]:
    """The [start, stop) of ``full`` that albumentations' PadIfNeeded + CenterCrop to ``want`` keep."""
    start = (full - want) // 2 if full >= want else -((want - full) // 2)
    return start, start + want


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
        size: (H, W) every slice is centre-cropped or zero-padded to (``fit="pad"``, pixels keep
            their millimetre scale) or scaled to (``fit="resize"``, masks by nearest neighbour).
        augment: flips, a small affine and intensity changes (training only).
        seed: fixes the split and the slice selection.
        cache: memory-map subjects from the preprocessing cache (built on first use); False reads
            every subject into memory instead.
        cache_dir: where the cache lives (None: ``$SEGBENCH_CACHE`` or ``~/.cache/segbench``).
        folds, fold: k-fold cross-validation by subject (stratified by site): test is fold ``fold``
            of ``folds``, val a ``val_fraction`` of the rest (``test_fraction`` is then unused).
        spacing: (x, y, z) mm every subject is resampled to; None keeps each subject's grid and
            refuses subjects whose voxel sizes differ.
        test_sites: split by site (``sites.tsv``): test is every subject of these sites, train and
            val come from the others only (None: subjects split across sites).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        modalities=MODALITIES,
        target: str = "whole_tumor",
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        tumor_fraction: float | None = 0.5,
        min_brain_fraction: float = 0.05,
        size=(96, 112),
        augment: bool = True,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        fit: str = "pad",
        folds: int | None = None,
        fold: int = 0,
        spacing=None,
        test_sites=None,
    ):
        modalities = tuple(modalities)
        if not modalities:
            raise SegbenchError(f"data.modalities is empty; name one or more of: {', '.join(MODALITIES)}")
        for m in modalities:
            if m not in MODALITIES:
                raise invalid_choice("data.modalities", m, MODALITIES)
        if fit not in FITS:
            raise invalid_choice("data.fit", fit, FITS)
        if not isinstance(cache, bool):
            raise SegbenchError(f"data.cache={cache!r} must be true (memory-mapped preprocessing cache) or false")
        if target not in TARGETS:
            raise invalid_choice("data.target", target, TARGETS)
        self.modalities, self.regions = modalities, TARGETS[target]
        if tumor_fraction is not None and not 0 <= float(tumor_fraction) <= 1:
            raise SegbenchError(f"data.tumor_fraction={tumor_fraction} must be between 0 and 1 (or null: every slice)")
        volumes = load_brats(str(root), modalities, cache, cache_dir, parse_spacing(spacing))
        sites = read_sites(str(root))
        chosen = subject_split(
            [v.subject for v in volumes],
            split,
            val_fraction,
            seed,
            test_fraction,
            strata=sites,
            folds=folds,
            fold=fold,
            test_sites=test_sites,
        )
        self.volumes = [v for v in volumes if v.subject in chosen]
        self.site_of = sites  # subject -> site (sites.tsv); empty when the data names no sites
        rng = np.random.default_rng(seed)
        self.index = []
        for i, v in enumerate(self.volumes):
            brain = np.flatnonzero(v.brain_fraction >= min_brain_fraction)
            if split == "train":
                brain = brain[select_slices(v.tumor_slices[brain], tumor_fraction, rng)]
            self.index += [(i, int(z)) for z in brain]
        # Per sample, the case it belongs to: evaluation puts a case's slices back into one volume.
        self.cases = [self.volumes[i].subject for i, _ in self.index]
        # Each case's own voxel size (Z, H, W) in mm, for its HD95.
        self.spacing = {v.subject: v.spacing for v in self.volumes}
        super().__init__(
            size=tuple(size),
            augment=augment and split == "train",
            pad_label=0,
            resize=fit == "resize",
            loaded_at_size=fit == "pad",
        )
        self.fit = fit

    def sample_sites(self) -> list[str]:
        """Each sample's site ("" where sites.tsv does not name its subject)."""
        return [self.site_of.get(case, "") for case in self.cases]

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
        # Read only the window the centre crop/pad keeps (zeros where it reaches past the volume),
        # so the transform's pad and crop have nothing left to do.
        window = (
            [_centre_window(full, want) for full, want in zip(volume.shape[1:], self.size)]
            if self.fit == "pad"
            else [(0, full) for full in volume.shape[1:]]
        )
        images, labels = volume.read_box((z, z + 1), *window)
        # (H, W, M) float32 in one contiguous block, as OpenCV's warps want it; cast by torch, whose
        # float16 conversion is vectorised (numpy's took 4x as long, the loader's largest single cost).
        image = torch.from_numpy(images[0]).permute(1, 2, 0).float().contiguous().numpy()
        return image, labels[0], (volume.scale, volume.shift)

    def finish(self, image: np.ndarray, labels: np.ndarray, extra):
        scale, shift = extra
        # z-score per volume, channel by channel: on (H, W, M) numpy's inner loop would run over the
        # M = 4 channels only, ten times slower than over whole planes.
        planes = np.ascontiguousarray(image.transpose(2, 0, 1))
        planes = planes * scale[:, None, None] + shift[:, None, None]
        return planes.transpose(1, 2, 0), region_masks(labels, self.regions)  # (H, W, M) view of (M, H, W)
