"""What every segbench dataset shares: crop/pad, albumentations augmentation, seeded sampling.

A dataset subclass implements ``load(i) -> (image HWC, labels HW, extra)`` and
``finish(image, labels, extra) -> (image HWC float32, target)``; this base applies the same
geometric transform to image and mask in between, so the padding label is the one the loss
and the metrics ignore.
"""

from __future__ import annotations

import functools
import itertools
import re
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segbench.errors import SegbenchError, invalid_choice
from segbench.progress import progress

SPLITS = ("train", "val", "test")
ALL = "all"  # every subject: how `segbench evaluate` reads a folder of subjects a run never saw
# Class-mask label of pixels no loss or metric counts (VOC's object borders, padding).
IGNORE_INDEX = 255
FITS = ("pad", "resize")  # data.fit: how an image meets data.size


def natural_key(path: Path) -> tuple:
    """Sort key that reads digit runs as numbers: ``case_2.tif`` before ``case_10.tif``, so a subject's
    slices stack in slice order (text order would put _10 .. _19 between _1 and _2)."""
    parts = re.split(r"(\d+)", str(path))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def check_split_fractions(val_fraction, test_fraction) -> None:
    """Each share in [0, 1) and their sum below 1, so some subjects are left to train on."""
    for name, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise SegbenchError(f"{name}={value!r} must be a number at least 0 and below 1")
    if val_fraction + test_fraction >= 1:
        raise SegbenchError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} leaves "
            "no subject for training; keep the sum below 1"
        )


def subject_split(
    subjects: list[str],
    split: str,
    val_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
    strata: dict[str, str] | None = None,
    folds: int | None = None,
    fold: int = 0,
    test_sites: list[str] | None = None,
) -> set[str]:
    """The subjects of ``split``: a seeded shuffle, test first, then val, the rest train.

    With ``strata`` (subject -> site) the shuffled subjects are dealt out site by site in turn,
    so every split holds its share of every site. At least one subject goes to val (and to test
    when ``test_fraction`` > 0) while at least one is left for training.

    With ``folds`` = k (cross-validation over subjects, as nnU-Net does) ``test_fraction`` is not
    used: each site's shuffled subjects are dealt to the k folds in turn and test is fold ``fold``,
    so the k folds test every subject exactly once; val is then ``val_fraction`` of all subjects,
    taken from the rest.

    With ``test_sites`` (site names of ``strata``) the split is by site: test is every subject of
    those sites, and val and train come from the other sites only, so no scanner of the test
    set was seen in training (what a new hospital's data is).
    """
    if split == ALL:
        return set(subjects)
    if split not in SPLITS:
        raise invalid_choice("split", split, (*SPLITS, ALL))
    if test_sites is not None:
        return _site_split(subjects, split, val_fraction, seed, strata, folds, list(test_sites))
    if folds is not None:
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise SegbenchError(f"data.folds={folds!r} must be an integer of at least 2 (or null: no cross-validation)")
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
            raise SegbenchError(f"data.fold={fold!r} must be an integer from 0 to {folds - 1} (data.folds={folds})")
        if len(subjects) < 2 * folds:
            raise SegbenchError(
                f"data.folds={folds} needs at least {2 * folds} subjects; this data has {len(subjects)}"
            )
        test_fraction = 0.0
    check_split_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for subject in sorted(subjects):
        groups.setdefault((strata or {}).get(subject, ""), []).append(subject)
    for members in groups.values():
        rng.shuffle(members)
    order = [m for rnd in itertools.zip_longest(*groups.values()) for m in rnd if m is not None]
    if folds is not None:
        # Site by site, subjects are dealt to folds in turn (one counter over all sites), so each fold
        # holds its share of every site and the folds differ in size by at most one subject.
        dealt = [m for members in groups.values() for m in members]
        test = [m for i, m in enumerate(dealt) if i % folds == fold]
        chosen = set(test)
        order = test + [m for m in order if m not in chosen]
    n = len(order)
    n_test = (
        len(test)
        if folds is not None
        else (max(1, int(round(n * test_fraction))) if test_fraction > 0 and n > 2 else 0)
    )
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 and n - n_test > 1 else 0
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    lo, hi = bounds[split]
    return set(order[lo:hi])


MIN_SITE_SUBJECTS = 2  # a held-out site of one subject is a case report, not a test set


def _site_split(subjects, split, val_fraction, seed, strata, folds, test_sites) -> set[str]:
    if folds is not None:
        raise SegbenchError("data.test_sites and data.folds are two different splits; set one of them")
    if not strata:
        raise SegbenchError("data.test_sites needs the subjects' sites: a sites.tsv (subject<TAB>site) in data.root")
    sites = sorted({strata.get(s, "") for s in subjects} - {""})
    bad = [t for t in test_sites if t not in sites]
    if bad or not test_sites:
        raise SegbenchError(
            f"data.test_sites={test_sites} names {bad[0] if bad else 'no site'!r}; the data's sites: {', '.join(sites)}"
        )
    for site in test_sites:
        n = sum(strata.get(s) == site for s in subjects)
        if n < MIN_SITE_SUBJECTS:
            raise SegbenchError(
                f"data.test_sites: site {site} has {n} subject(s); a held-out site needs at least {MIN_SITE_SUBJECTS}"
            )
    test = {s for s in subjects if strata.get(s) in test_sites}
    rest = [s for s in subjects if s not in test]
    if len(rest) < 2:
        raise SegbenchError(f"data.test_sites={test_sites} leaves {len(rest)} subject(s) to train and validate on")
    if split == "test":
        return test
    return subject_split(rest, split, val_fraction, seed, 0.0, strata)


def _read_problem(path: Path):
    """(decoded image, None) or (None, why it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as file:
            file.load()  # decoded once: a truncated file fails here, not an hour into training
            return file.copy(), None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        return None, f"cannot read it ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def _pair_problem(image_path: Path | None, mask_path: Path, valid: frozenset[int] | None) -> str | None:
    """What is wrong with one image/mask pair, naming the file; None when nothing is."""
    image_size = None
    if image_path is not None:
        image, problem = _read_problem(image_path)
        if problem:
            return f"image {image_path} {problem}"
        image_size = image.size
    mask_file, problem = _read_problem(mask_path)
    if problem:
        return f"mask {mask_path} {problem}"
    mask = np.asarray(mask_file)
    if image_size is not None and image_size != (mask.shape[1], mask.shape[0]):
        return (
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} is "
            f"{image_size[0]}x{image_size[1]}"
        )
    if valid is not None:
        values = np.unique(mask if mask.ndim == 2 else mask[..., 0])
        bad = sorted(set(values.tolist()) - valid)
        if bad:
            return (
                f"mask {mask_path} holds value(s) {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}; "
                f"valid: {_ranges(sorted(valid))}"
            )
    return None


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 3, 255] -> "0-3, 255"."""
    runs, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur is None or cur != prev + 1:
            runs.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return ", ".join(runs)


@functools.lru_cache(maxsize=8)
def check_masks(pairs: tuple[tuple[Path | None, Path], ...], valid: frozenset[int] | None, hint: str) -> None:
    """Every mask readable, the size of its image, and holding only ``valid`` values (None: any).

    Run once per dataset and process before training starts, so a bad file is one line naming
    it rather than an ``IndexError`` deep in the loss after an hour of training.
    """
    for image_path, mask_path in progress(pairs, "checking masks", len(pairs), "mask"):
        problem = _pair_problem(image_path, mask_path, valid)
        if problem:
            raise SegbenchError(f"{problem}{hint if 'holds value' in problem else ''}")


def build_transform(
    size,
    augment: bool,
    pad_label: int,
    random_crop: bool = False,
    scale=(0.9, 1.1),
    rotate: float = 10.0,
    resize: bool = False,
):
    """Pad to ``size``, crop to it (random when augmenting and ``random_crop``), then augment;
    with ``resize`` scale to ``size`` instead (masks by nearest neighbour)."""
    import albumentations as A
    import cv2

    # OpenCV's own thread pool keeps spinning after each small warp and fights torch's threads for
    # the cores: measured on 2 cores, the training loop ran at 0.94x a bare loop with it, 0.96x without.
    cv2.setNumThreads(1)
    steps = []
    if size is not None and resize:
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    elif size is not None:
        h, w = size
        steps.append(A.PadIfNeeded(h, w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=pad_label))
        steps.append(A.RandomCrop(h, w) if augment and random_crop else A.CenterCrop(h, w))
    if augment:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=scale,
                rotate=(-rotate, rotate),
                translate_percent=(-0.05, 0.05),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=pad_label,
                p=0.5,
            ),
            A.RandomBrightnessContrast(0.1, 0.1, brightness_by_max=False, p=0.5),
        ]
    return A.Compose(steps)


class SegmentationDataset(Dataset, ABC):
    """Base class; items are an index or ``(index, seed)`` so augmentation replays exactly on resume."""

    target_kind = "multilabel"  # or "multiclass": (H, W) int64 with ``ignore_index`` 255
    # Per sample, the case (subject) it belongs to, for per-case metrics; None: every sample is its own.
    cases: list[str] | None = None
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)  # (Z, H, W) mm between a case's voxels, for HD95
    distance_unit = "mm"  # what HD95 is measured in (metrics.json hd95_unit)

    def __init__(
        self,
        size,
        augment: bool,
        pad_label: int,
        random_crop: bool = False,
        resize: bool = False,
        loaded_at_size: bool = False,
    ):
        self.size, self.augment = size, augment
        # ``loaded_at_size``: ``load`` already returns ``size`` (it read just the crop window), so the
        # pad and crop steps would copy the sample for nothing (about a tenth of the loader's time).
        self.transform = build_transform(
            None if loaded_at_size else size, augment, pad_label, random_crop, resize=resize
        )

    @abstractmethod
    def load(self, i: int):
        """Sample ``i`` before augmentation: (image (H, W, C), labels (H, W), extra for ``finish``)."""

    @abstractmethod
    def finish(self, image, labels, extra):
        """Augmented sample -> (image (H, W, C) float32, target array)."""

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            image, labels, extra = self.load(index)
        except OSError as err:  # a file that vanished or broke after the checks at start
            raise SegbenchError(f"{type(self).__name__} sample {index}: {err}") from None
        if seed is not None:
            self.transform.set_random_seed(seed)
        out = self.transform(image=image, mask=labels)
        image, target = self.finish(out["image"], out["mask"], extra)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return image, torch.from_numpy(np.ascontiguousarray(target))  # (C, H, W), target


class StepBatchSampler(Sampler[list]):
    """Batches of ``(index, seed)`` for steps ``start .. stop - 1``, a pure function of (seed, step).

    Each epoch is a seeded permutation (incomplete last batch dropped), so step ``s`` always sees
    the same images with the same augmentation: a resumed run continues the same curve. Under
    DDP each rank takes its own slice of every global batch.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1
    ):
        global_batch = batch_size * world_size
        if num_items < global_batch:
            from segbench.errors import SegbenchError

            raise SegbenchError(
                f"data.batch_size={batch_size} x {world_size} rank(s) is more than the "
                f"{num_items} training samples; lower data.batch_size"
            )
        self.n, self.batch, self.seed = num_items, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world_size
        self.steps_per_epoch = num_items // global_batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
            lo = (k * self.world + self.rank) * self.batch
            yield [(int(i), zlib.crc32(f"{self.seed}/{step}/{i}".encode())) for i in perm[lo : lo + self.batch]]
