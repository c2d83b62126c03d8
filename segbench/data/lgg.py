"""The Kaggle LGG brain-MRI set (Buda, Saha, Mazurowski 2019) read as it ships.

Layout: ``<root>/TCGA_<institution>_<patient>_<date>/<case>_<n>.tif`` beside ``<case>_<n>_mask.tif``
(``root`` may also be the folder holding ``kaggle_3m/``). Slices are 256 x 256 RGB (pre-contrast,
FLAIR, post-contrast), masks 0 or 255 (FLAIR abnormality). TIFFs are read whether stored
uncompressed (as downloaded) or deflate-compressed.

- A patient folder is one case; its slices are ordered by their number ``n`` (as an integer, so
  ``_2`` comes before ``_10``), which is what per-patient 3-D Dice and HD95 are computed on.
- The site of a patient is the institution code in its folder name (``TCGA_HT_...`` -> ``HT``), or
  ``sites.tsv`` (subject<TAB>site) in the root for folders named otherwise; so ``data.test_sites``,
  ``data.split=by_site`` and ``data.site_batches`` work as on BraTS.
- Intensities are normalised per patient volume and channel (``normalize=volume``): each channel
  clipped to its ``clip_percentiles`` over the whole volume, then z-scored over the volume, as the
  set's reference code does; ``normalize=slice`` does the same per slice (empty edge slices then
  have their noise stretched to unit variance).
- The files carry no voxel size: HD95 is in pixels of the files' grid in-plane and in slices
  through-plane, unless ``spacing`` ([x, y, z] mm of the files' grid) is given.

Every file is read and checked when the dataset is built (about 5 s for 2,281 slices on 2 cores),
before a run writes anything: a missing mask, an unreadable TIFF, a mask value other than 0 / 255
or a slice of another size is one line naming the file.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.data.brats import read_sites, select_slices
from segbench.data.common import FITS, SegmentationDataset, subject_split
from segbench.errors import SegbenchError, invalid_choice

CASE_NAME = re.compile(r"^TCGA_(?P<site>[A-Za-z0-9]{2})_(?P<patient>[A-Za-z0-9]+)_(?P<date>\d{8})$")
SLICE_NAME = re.compile(r"^(?P<case>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
NORMALIZATIONS = ("volume", "slice")
MASK_VALUES = (0, 255)


@dataclass(frozen=True)
class Patient:
    """One patient folder: its slices' image and mask files in slice order."""

    subject: str
    site: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...]


def _patient(folder: Path, sites: dict[str, str]) -> Patient | None:
    """The patient in ``folder``, None when it holds no slice files; one line for a slice without its mask."""
    images, masks = {}, {}
    for path in folder.iterdir():
        match = SLICE_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        (masks if match["mask"] else images)[int(match["n"])] = path
    if not images and not masks:
        return None
    for n in sorted(set(images) ^ set(masks)):
        if n in images:
            want = images[n].name[: -len(images[n].suffix)] + "_mask" + images[n].suffix
            raise SegbenchError(f"{images[n]} has no mask {want} beside it; every slice needs its mask")
        raise SegbenchError(f"{masks[n]} has no image slice beside it; every mask needs its slice")
    order = sorted(images)  # slice numbers as integers: _2 before _10
    named = CASE_NAME.match(folder.name)
    site = sites.get(folder.name) or (named["site"].upper() if named else "")
    return Patient(folder.name, site, tuple(images[n] for n in order), tuple(masks[n] for n in order))


def find_patients(root: str) -> tuple[Path, list[Patient]]:
    """The folder that holds the patient folders (``root`` or ``root/kaggle_3m``) and its patients."""
    base = Path(root)
    if not base.is_dir():
        state = "is a file, not a folder" if base.exists() else "does not exist"
        raise SegbenchError(
            f"data.root={str(root)!r} {state}; download the Kaggle LGG set (see data/README.md) "
            "and point data.root at its kaggle_3m folder"
        )
    if (base / "kaggle_3m").is_dir() and not any(CASE_NAME.match(p.name) for p in base.iterdir()):
        base = base / "kaggle_3m"
    sites = read_sites(str(base))  # subject<TAB>site, as BraTS folders and the phantom write it
    patients = [p for p in (_patient(f, sites) for f in sorted(base.iterdir()) if f.is_dir()) if p is not None]
    if not patients:
        raise SegbenchError(
            f"data.root={str(root)!r} holds no patient folders of slices "
            "(<patient>/<case>_<n>.tif with <case>_<n>_mask.tif, as Kaggle's kaggle_3m)"
        )
    return base, patients


def _read(path: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), Image.open(path) as file:
            warnings.simplefilter("ignore")  # PIL's "Corrupt EXIF data" beside the error said below
            file.load()
            if what == "image":
                return np.asarray(file if file.mode == "RGB" else file.convert("RGB"))
            return np.asarray(file if file.mode in ("L", "1", "I", "I;16") else file.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegbenchError(f"{what} {path} cannot be read ({reason}); is it a truncated or corrupt TIFF?") from None


@dataclass
class Volume:
    """One patient in memory: images (Z, H, W, 3) uint8 clipped and resized, masks (Z, H, W) uint8 0/1,
    and the z-score applied per channel in ``finish`` (per slice with ``normalize=slice``)."""

    subject: str
    site: str
    images: np.ndarray
    masks: np.ndarray
    scale: np.ndarray  # (Z, 3): x * scale + shift is the normalised intensity
    shift: np.ndarray
    native: tuple[int, int]  # (H, W) of the files

    @property
    def tumor_slices(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).any(1)


def read_patient(patient: Patient, size, fit: str, normalize: str, clip_percentiles) -> Volume:
    """Read, check, clip, resize and compute the normalisation of one patient."""
    import cv2

    images, masks, first = [], [], None
    for image_path, mask_path in zip(patient.images, patient.masks):
        image, mask = _read(image_path, "image"), _read(mask_path, "mask")
        if mask.shape != image.shape[:2]:
            raise SegbenchError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{image_path.name} is {image.shape[1]}x{image.shape[0]}"
            )
        if first is None:
            first = image_path
        elif image.shape != images[0].shape:
            raise SegbenchError(
                f"slice {image_path} is {image.shape[1]}x{image.shape[0]} but {first.name} of the "
                f"same patient is {images[0].shape[1]}x{images[0].shape[0]}; a patient's slices "
                "share one size"
            )
        bad = sorted(set(np.unique(mask).tolist()) - set(MASK_VALUES))
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            raise SegbenchError(f"mask {mask_path} holds value(s) {shown}; valid: 0 (background) and 255 (tumour)")
        images.append(image)
        masks.append(mask)
    volume = np.stack(images)  # (Z, H, W, 3) uint8
    truth = (np.stack(masks) > 0).astype(np.uint8)
    axes = (0, 1, 2) if normalize == "volume" else (1, 2)
    clipped = np.empty(volume.shape, np.float32)
    scale, shift = np.empty((len(volume), 3), np.float32), np.empty((len(volume), 3), np.float32)
    for c in range(3):  # channel by channel: reductions over a contiguous (Z, H, W) block are 5x faster
        channel = np.ascontiguousarray(volume[..., c], dtype=np.float32)
        lo, hi = np.percentile(channel, list(clip_percentiles), axis=axes, keepdims=True)
        channel = np.clip(channel, lo, hi)
        mean, std = channel.mean(axis=axes), channel.std(axis=axes)
        scale[:, c], shift[:, c] = 1.0 / (std + 1e-6), -mean / (std + 1e-6)
        clipped[..., c] = channel
    native = volume.shape[1:3]
    if fit == "resize" and tuple(size) != tuple(native):
        h, w = size
        # Area averaging for images; masks averaged the same way and cut at half (a nearest-neighbour
        # pick of every second pixel would drop thin rims of tumour at random).
        clipped = np.stack([cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA) for s in clipped])
        truth = np.stack(
            [cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5 for m in truth]
        ).astype(np.uint8)
    return Volume(patient.subject, patient.site, clipped.astype(np.float16), truth, scale, shift, native)


def describe(base: Path, patients: list[Patient]) -> str:
    """The one line that says what was found."""
    counts: dict[str, int] = {}
    for p in patients:
        counts[p.site or "?"] = counts.get(p.site or "?", 0) + 1
    slices = sum(len(p.images) for p in patients)
    sites = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
    return f"{base}: Kaggle LGG layout, {len(patients)} patients, {slices:,} slices; institutions {sites}"


@functools.lru_cache(maxsize=2)
def load_lgg(
    root: str, size: tuple[int, int], fit: str, normalize: str, clip_percentiles: tuple[float, float]
) -> tuple[str, tuple[Volume, ...]]:
    """What was found (one line) and every patient under ``root``, read once per process (train, val
    and test share it)."""
    base, patients = find_patients(root)
    line = (
        f"{describe(base, patients)}; normalised per {'patient volume' if normalize == 'volume' else 'slice'} "
        f"and channel (clipped to percentiles {clip_percentiles[0]:g}-{clip_percentiles[1]:g}, then z-scored)"
    )
    return line, tuple(read_patient(p, size, fit, normalize, clip_percentiles) for p in patients)


def _check_options(fit, normalize, clip_percentiles, size, tumor_fraction):
    if fit not in FITS:
        raise invalid_choice("data.fit", fit, FITS)
    if normalize not in NORMALIZATIONS:
        raise invalid_choice("data.normalize", normalize, NORMALIZATIONS)
    try:
        lo, hi = (float(v) for v in clip_percentiles)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0 <= lo < hi <= 100:
        raise SegbenchError(
            f"data.clip_percentiles={clip_percentiles!r} must be two percentiles, low below high, "
            "within 0-100, e.g. [1, 99]"
        )
    if tumor_fraction is not None and not (_number(tumor_fraction) and 0 <= float(tumor_fraction) <= 1):
        raise SegbenchError(f"data.tumor_fraction={tumor_fraction!r} must be between 0 and 1 (or null: every slice)")
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in size):
        raise SegbenchError(f"data.size={list(size)} must be [H, W], whole numbers of at least 8 pixels each")
    return lo, hi


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LggSlices(SegmentationDataset):
    """Slices of the Kaggle LGG set with one sigmoid target (the FLAIR abnormality).

    Args:
        root: the ``kaggle_3m`` folder (or the folder that holds it).
        split: "train", "val", "test" (by patient; stratified by institution) or "all" (every
            patient, as ``segbench evaluate`` scores another folder).
        size: (H, W) every slice is brought to; ``fit="resize"`` scales it (the default for this
            set), ``fit="pad"`` centre-crops or zero-pads.
        normalize: "volume" (per patient and channel) or "slice".
        clip_percentiles: intensity percentiles each channel is clipped to before the z-score.
        tumor_fraction: share of tumour-bearing slices among the training slices (None: every slice);
            val and test always hold every slice, in order.
        val_fraction, test_fraction, folds, fold, test_sites, seed: the split, as ``subject_split``.
        spacing: [x, y, z] mm of the files' grid for HD95 in mm; None gives HD95 in pixels of the
            files' grid (in-plane) and slices (through-plane).
    """

    target_kind = "multilabel"
    in_channels, num_outputs, class_names = 3, 1, ("tumor",)

    def __init__(
        self,
        root: str,
        split: str = "train",
        size=(128, 128),
        fit: str = "resize",
        normalize: str = "volume",
        clip_percentiles=(1.0, 99.0),
        tumor_fraction: float | None = None,
        augment: bool = True,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        folds: int | None = None,
        fold: int = 0,
        test_sites=None,
        spacing=None,
        seed: int = 0,
    ):
        clip = _check_options(fit, normalize, clip_percentiles, tuple(size), tumor_fraction)
        size = tuple(int(s) for s in size)
        self.summary, volumes = load_lgg(str(root), size, fit, normalize, clip)
        self.site_of = {v.subject: v.site for v in volumes}
        strata = {s: site for s, site in self.site_of.items() if site}
        chosen = subject_split(
            list(self.site_of),
            split,
            val_fraction,
            seed,
            test_fraction,
            strata=strata,
            folds=folds,
            fold=fold,
            test_sites=list(test_sites) if test_sites else None,
        )
        self.volumes = [v for v in volumes if v.subject in chosen]
        rng = np.random.default_rng(seed)
        self.index = []
        for i, v in enumerate(self.volumes):
            keep = np.arange(len(v.masks))
            if split == "train" and tumor_fraction is not None:
                keep = select_slices(v.tumor_slices, tumor_fraction, rng)
            self.index += [(i, int(z)) for z in keep]
        self.cases = [self.volumes[i].subject for i, _ in self.index]
        self.spacing = {v.subject: _spacing(spacing, v, size, fit) for v in self.volumes}
        self.distance_unit = "mm" if spacing is not None else "pixels of the files' grid in-plane, slices through-plane"
        super().__init__(
            size=size, augment=augment and split == "train", pad_label=0, resize=False, loaded_at_size=fit == "resize"
        )

    def sample_sites(self) -> list[str]:
        return [self.site_of.get(case, "") for case in self.cases]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int):
        v, z = self.index[i]
        volume = self.volumes[v]
        return volume.images[z].astype(np.float32), volume.masks[z], (volume.scale[z], volume.shift[z])

    def finish(self, image: np.ndarray, labels: np.ndarray, extra):
        scale, shift = extra
        planes = np.ascontiguousarray(image.transpose(2, 0, 1)) * scale[:, None, None] + shift[:, None, None]
        return planes.transpose(1, 2, 0), labels[None].astype(np.float32)


def _spacing(spacing, volume: Volume, size, fit: str) -> tuple[float, float, float]:
    """(Z, H, W) distance between a case's voxels as scored: mm when ``spacing`` is given, else file pixels."""
    if spacing is None:
        x, y, z = 1.0, 1.0, 1.0
    else:
        try:
            x, y, z = (float(s) for s in spacing)
        except (TypeError, ValueError):
            x = y = z = float("nan")
        if not all(np.isfinite(s) and s > 0 for s in (x, y, z)):
            raise SegbenchError(
                f"data.spacing={spacing!r} must be null or three positive sizes in mm, e.g. "
                "[0.94, 0.94, 3.0] (x, y, z of the files' grid)"
            )
    h0, w0 = volume.native
    fy, fx = (h0 / size[0], w0 / size[1]) if fit == "resize" else (1.0, 1.0)
    return (z, y * fy, x * fx)
