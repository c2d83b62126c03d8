"""One BraTS subject, preprocessed once: read and checked from NIfTI, cropped to the head, cached.

Reading a 1 mm BraTS subject (four gzip'd NIfTI images and a label map) takes about 1.4 s and
74 MiB; for the 1,251 subjects of BraTS 2021 that is half an hour and 91 GiB before the first
step of every run. So each subject is preprocessed once into a cache folder as ``.npy`` arrays
(images in [0, 1] as float16, labels as uint8, both cropped to the bounding box of the head and
the tumour) with its statistics in ``meta.json``, and every run memory-maps them: a run opens
the cache in well under a second, reads only the slices or patches it draws, and loader workers
share the pages through the OS page cache. A subject is rebuilt when any of its source files
changes size or modification time, or when the cache format changes (``CACHE_VERSION``).

Outside the crop box every voxel is zero (no signal outside the skull-stripped head, label 0),
so ``read_box`` gives back exactly what the uncropped volume holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.data.layouts import LABEL_NAMES, Subject
from segbench.errors import SegbenchError

CACHE_VERSION = 2  # 2: volumes brought to RAS from their affine, labels mapped from each layout's codes


def read_nifti(path: Path, subject: str, four_d: bool = False):
    """A NIfTI image reoriented to RAS (from its affine: flips and axis swaps, no resampling) and
    its voxels, 3-D (or 4-D, channels last, with ``four_d``); unreadable, truncated or wrongly
    shaped files are one-line errors."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(path))
        voxels = np.asarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib each raise their own kinds
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegbenchError(
            f"subject {subject}: cannot read {path} ({reason}); is it a truncated or corrupt .nii.gz?"
        ) from None
    if voxels.ndim != (4 if four_d else 3):
        raise SegbenchError(
            f"subject {subject}: {path.name} has shape {voxels.shape}; a "
            f"{'4-D (dataset.json names its channels)' if four_d else '3-D'} image is expected"
        )
    return image, voxels


def _map_labels(seg: np.ndarray, path: Path, subject: Subject) -> np.ndarray:
    """The label map in canonical codes (1 necrotic, 2 oedema, 4 enhancing); a code the subject's
    layout does not define is refused with the subject, the file and the codes it defines."""
    values = np.unique(seg)
    bad = [v for v in values.tolist() if v not in subject.labels]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        valid = ", ".join(f"{k} ({LABEL_NAMES[v]})" for k, v in sorted(subject.labels.items()))
        raise SegbenchError(
            f"subject {subject.id}: {path.name} holds label value(s) {shown}; the {subject.layout} "
            f"layout's labels are {valid}"
        )
    table = np.zeros(int(max(subject.labels)) + 1, np.uint8)
    for raw, canon in subject.labels.items():
        table[int(raw)] = canon
    return table[seg.astype(np.int64)]


def _to_axial(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS volume -> (Z, H, W) slices, anterior at the top."""
    return np.ascontiguousarray(np.flip(volume.transpose(2, 1, 0), axis=1))


def _stamp(paths: list[Path]) -> dict[str, list[int]]:
    """What says a source changed: each file's size and modification time."""
    return {f"{p.parent.name}/{p.name}": [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


@dataclass
class Volume:
    """One subject in axial (Z, H, W) order, its arrays either in memory or memory-mapped from the cache.

    Attributes:
        subject: the subject's id.
        shape: (Z, H, W) of the whole volume.
        box: (z0, z1, y0, y1, x0, x1), the stored crop; everything outside it is zero.
        scale, shift: (M,) per modality, ``z = image * scale + shift`` is the z-score inside the brain.
        brain_fraction: (Z,) share of each slice inside the brain.
        tumor_slices: (Z,) whether each slice holds any tumour label.
        spacing: (Z, H, W) voxel size in mm, for HD95.
    """

    subject: str
    shape: tuple[int, int, int]
    box: tuple[int, int, int, int, int, int]
    scale: np.ndarray
    shift: np.ndarray
    brain_fraction: np.ndarray
    tumor_slices: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    folder: Path | None = None  # the cache folder; None: the arrays below are held in memory
    _images: np.ndarray | None = field(default=None, repr=False)  # (z, M, h, w) float16 in [0, 1], cropped
    _labels: np.ndarray | None = field(default=None, repr=False)  # (z, h, w) uint8, cropped

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._images

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        return self._labels

    def __getstate__(self):
        # A loader worker started by spawn reopens the memory maps rather than copying the arrays.
        state = dict(self.__dict__)
        if self.folder is not None:
            state["_images"] = state["_labels"] = None
        return state

    def read_box(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]):
        """Images (z, M, h, w) float16 and labels (z, h, w) uint8 of a box in whole-volume
        coordinates (it may reach outside the volume); zero wherever nothing is stored."""
        want = (z, y, x)
        have = [(self.box[2 * a], self.box[2 * a + 1]) for a in range(3)]
        size = [hi - lo for lo, hi in want]
        images = np.zeros((size[0], len(self.scale), size[1], size[2]), np.float16)
        labels = np.zeros(size, np.uint8)
        lo = [max(w[0], h[0]) for w, h in zip(want, have)]
        hi = [min(w[1], h[1]) for w, h in zip(want, have)]
        if all(a < b for a, b in zip(lo, hi)):
            src = tuple(slice(a - h[0], b - h[0]) for a, b, h in zip(lo, hi, have))
            dst = tuple(slice(a - w[0], b - w[0]) for a, b, w in zip(lo, hi, want))
            images[dst[0], :, dst[1], dst[2]] = self.images[src[0], :, src[1], src[2]]
            labels[dst] = self.labels[src]
        return images, labels

    def slice(self, z: int):
        """Slice ``z``: images (M, H, W) float16 and labels (H, W) uint8."""
        images, labels = self.read_box((z, z + 1), (0, self.shape[1]), (0, self.shape[2]))
        return images[0], labels[0]

    def whole(self):
        """The whole volume: images (Z, M, H, W) float16 and labels (Z, H, W) uint8."""
        return self.read_box(*((0, s) for s in self.shape))


def read_subject(subject: Subject, modalities: tuple[str, ...], spacing=None):
    """One subject's images (float32) and canonical labels (uint8), each (X, Y, Z) in RAS, and the
    voxel size (x, y, z) in mm, checked: readable files, one shape, known labels, finite voxels and
    no all-zero modality, each refused naming the subject and the file. ``spacing`` (x, y, z mm):
    resample to it (linear for images, nearest for labels); None keeps the stored grid."""
    seg_img, seg = read_nifti(subject.seg, subject.id)
    seg = _map_labels(seg, subject.seg, subject)
    zooms = tuple(float(z) for z in seg_img.header.get_zooms()[:3])
    images, read = [], {}  # path -> voxels: an MSD case's 4-D file is decoded once for its four channels
    for modality in modalities:
        where = subject.channel(modality)
        path = where.path
        if path not in read:
            read[path] = read_nifti(path, subject.id, four_d=where.index is not None)[1]
        if where.index is not None and where.index >= read[path].shape[3]:
            raise SegbenchError(
                f"subject {subject.id}: {path.name} has shape {read[path].shape}; dataset.json "
                f"names channel {where.index}"
            )
        image = (read[path] if where.index is None else read[path][..., where.index]).astype(np.float32)
        if image.shape != seg.shape:
            raise SegbenchError(
                f"subject {subject.id}: {path.name} has shape {image.shape} but {subject.seg.name} has {seg.shape}"
            )
        finite = np.isfinite(image)
        if not finite.all():
            raise SegbenchError(
                f"subject {subject.id}: {path.name} has {int((~finite).sum())} NaN or infinite "
                "voxel(s); fix or drop the subject"
            )
        if not image.any():
            raise SegbenchError(
                f"subject {subject.id}: {path.name} is all zero (a failed export?); fix or drop the subject"
            )
        images.append(image)
    if spacing is not None:
        images, seg, zooms = _resample(images, seg, zooms, tuple(float(v) for v in spacing))
    return images, seg, zooms


def _resample(images, seg, zooms, spacing):
    from scipy import ndimage

    factor = [z / s for z, s in zip(zooms, spacing)]
    if np.allclose(factor, 1.0, rtol=1e-3):
        return images, seg, zooms
    shape = tuple(max(1, int(round(n * f))) for n, f in zip(seg.shape, factor))
    exact = [n / m for n, m in zip(shape, seg.shape)]  # the factor zoom() uses for that output shape
    images = [ndimage.zoom(im, exact, order=1).clip(min=0) for im in images]
    return images, ndimage.zoom(seg, exact, order=0), tuple(z * n / m for z, n, m in zip(zooms, seg.shape, shape))


def preprocess(subject: Subject, modalities: tuple[str, ...], spacing=None) -> Volume:
    """One subject read from NIfTI (``read_subject``), scaled, brought to axial order and cropped."""
    images, seg, zooms = read_subject(subject, modalities, spacing)
    brain = np.any(np.stack(images) > 0, axis=0)
    if not brain.any():
        raise SegbenchError(f"subject {subject.id}: no image has a positive voxel (is the intensity inverted?)")
    scaled, scale, shift = [], [], []
    for image in images:
        top = float(np.percentile(image[brain], 99.5)) or 1.0
        mean, std = float(image[brain].mean()), float(image[brain].std()) or 1.0
        scaled.append(_to_axial((image / top).clip(0, 1)))
        scale.append(top / std)  # z-score applied to the [0, 1] image after augmentation
        shift.append(-mean / std)
    labels, brain = _to_axial(seg), _to_axial(brain)
    # The box holds every voxel with signal or a label; outside it the volume is all zero.
    keep = brain | (labels > 0)
    box = tuple(int(v) for axis in range(3) for v in _extent(keep.any(axis=tuple(a for a in range(3) if a != axis))))
    crop = (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))
    stacked = np.stack([s[crop] for s in scaled], axis=1).astype(np.float16)  # (z, M, h, w)
    return Volume(
        subject.id,
        labels.shape,
        box,
        np.asarray(scale, np.float32),
        np.asarray(shift, np.float32),
        brain.mean(axis=(1, 2)),
        labels.any(axis=(1, 2)),
        (zooms[2], zooms[1], zooms[0]),
        None,
        stacked,
        np.ascontiguousarray(labels[crop]),
    )


def _extent(flags: np.ndarray) -> tuple[int, int]:
    where = np.flatnonzero(flags)
    return (int(where[0]), int(where[-1]) + 1) if len(where) else (0, 0)


def default_cache_dir() -> Path:
    """``$SEGBENCH_CACHE``, else ``$XDG_CACHE_HOME/segbench``, else ``~/.cache/segbench``."""
    if os.environ.get("SEGBENCH_CACHE"):
        return Path(os.environ["SEGBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segbench"


class VolumeCache:
    """The cache folder of one data root, modality set and resampling: ``<cache_dir>/brats-<hash>/<subject>/``.

    Outside the data root on purpose: real BraTS often sits on a read-only share, and a run
    must not change the folder it reads.
    """

    def __init__(
        self, root: str, modalities: tuple[str, ...], cache_dir: str | os.PathLike | None = None, spacing=None
    ):
        spacing = None if spacing is None else [float(v) for v in spacing]
        key = json.dumps([str(Path(root).resolve()), list(modalities), CACHE_VERSION] + ([spacing] if spacing else []))
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        self.folder = Path(cache_dir or default_cache_dir()) / f"brats-{digest}"
        self.root, self.modalities, self.spacing = root, tuple(modalities), spacing

    def open(self, subject: Subject) -> Volume | None:
        """The cached subject, or None when it is missing or its sources have changed since."""
        where = self.folder / subject.id
        try:
            meta = json.loads((where / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            current = _stamp(subject.sources(self.modalities))
        except SegbenchError:
            return None  # a file went missing: rebuilding names it
        if meta.get("version") != CACHE_VERSION or meta.get("sources") != current:
            return None
        return Volume(
            meta["subject"],
            tuple(meta["shape"]),
            tuple(meta["box"]),
            np.asarray(meta["scale"], np.float32),
            np.asarray(meta["shift"], np.float32),
            np.asarray(meta["brain_fraction"], np.float64),
            np.asarray(meta["tumor_slices"], bool),
            tuple(meta["spacing"]),
            where,
        )

    def build(self, subject: Subject) -> Volume:
        """Preprocess one subject and store it; the stored copy appears whole or not at all."""
        sources = subject.sources(self.modalities)
        stamp = _stamp(sources)  # taken before reading, so a file changed meanwhile is rebuilt next time
        volume = preprocess(subject, self.modalities, self.spacing)
        self.folder.mkdir(parents=True, exist_ok=True)
        readme = self.folder / "source.txt"
        if not readme.exists():
            resampled = f", resampled to {self.spacing} mm" if self.spacing else ""
            readme.write_text(
                f"segbench BraTS cache of {Path(self.root).resolve()} ({', '.join(self.modalities)}{resampled})\n"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{volume.subject}.", dir=self.folder))
        try:
            np.save(tmp / "images.npy", volume.images)
            np.save(tmp / "labels.npy", volume.labels)
            meta = {
                "version": CACHE_VERSION,
                "subject": volume.subject,
                "shape": list(volume.shape),
                "box": list(volume.box),
                "scale": volume.scale.tolist(),
                "shift": volume.shift.tolist(),
                "brain_fraction": volume.brain_fraction.tolist(),
                "tumor_slices": volume.tumor_slices.tolist(),
                "spacing": list(volume.spacing),
                "sources": stamp,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.chmod(tmp, 0o755)
            final = self.folder / volume.subject
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:  # another process (a DDP rank, a parallel sweep job) stored it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Handed back memory-mapped, so building a large cache holds one subject in RAM at a time.
        volume.folder, volume._images, volume._labels = final, None, None
        return volume
