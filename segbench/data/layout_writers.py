"""Write one subject in any of the four layouts ``layouts`` reads (the phantom and the tests use these).

Every file lands under a temporary name and is renamed when whole, so a killed writer never
leaves a subject that reads as complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from segbench.data.layouts import ED, ET, LAYOUTS, MODALITIES, NCR, SUFFIXES
from segbench.errors import invalid_choice


def subject_id(layout: str, prefix: str, index: int) -> str:
    """The id a layout's own data would give subject ``index``."""
    if layout not in LAYOUTS:
        raise invalid_choice("--layout", layout, LAYOUTS)
    return {
        "brats2021": f"{prefix}_{index:05d}",
        "brats2023": f"{prefix}-{index:05d}-000",
        "msd": f"{prefix}_{index:03d}",
        "nnunet": f"{prefix}_{index:03d}",
    }[layout]


# What each layout stores for the canonical codes, and the dataset.json the two indexed ones carry.
_WRITTEN_LABELS = {
    "brats2021": {NCR: 1, ED: 2, ET: 4},
    "brats2023": {NCR: 1, ED: 2, ET: 3},
    "msd": {ED: 1, NCR: 2, ET: 3},
    "nnunet": {ED: 1, NCR: 2, ET: 3},
}
_MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")  # Task01's order
_JSON_NAMES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "t1gd", "t2": "T2w"}


def subject_exists(layout: str, out: Path, sid: str) -> bool:
    if layout in SUFFIXES:
        return (out / sid).is_dir()
    return (out / "labelsTr" / f"{sid}.nii.gz").exists()


def _save(image, path: Path) -> None:
    """Save through a temporary name, so a killed writer leaves no half-written file under the real one."""
    import nibabel as nib

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_subject(
    layout: str, out: Path, sid: str, images: dict[str, np.ndarray], labels: np.ndarray, affine: np.ndarray
) -> None:
    """Write one subject (``images`` by canonical modality, ``labels`` in canonical codes) in ``layout``.

    BraTS subjects go to a temporary folder renamed when complete; MSD and nnU-Net files are each
    renamed into place, the label map last, so a case counts as written only once it is whole.
    """
    import shutil

    import nibabel as nib

    stored = np.zeros_like(labels)
    for canon, code in _WRITTEN_LABELS[layout].items():
        stored[labels == canon] = code
    if layout in SUFFIXES:
        sep, suffixes = SUFFIXES[layout]
        tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", dir=out))
        try:
            for modality, image in images.items():
                nib.save(nib.Nifti1Image(image, affine), tmp / f"{sid}{sep}{suffixes[modality]}.nii.gz")
            nib.save(nib.Nifti1Image(stored, affine), tmp / f"{sid}{sep}seg.nii.gz")
            if (out / sid).is_dir():
                shutil.rmtree(out / sid)
            os.replace(tmp, out / sid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    order = [m for m in _MSD_CHANNELS if m in images]
    if layout == "msd":
        _save(
            nib.Nifti1Image(np.stack([images[m] for m in order], axis=-1), affine), out / "imagesTr" / f"{sid}.nii.gz"
        )
    else:
        for i, m in enumerate(order):
            _save(nib.Nifti1Image(images[m], affine), out / "imagesTr" / f"{sid}_{i:04d}.nii.gz")
    _save(nib.Nifti1Image(stored, affine), out / "labelsTr" / f"{sid}.nii.gz")


def write_index(layout: str, out: Path, sids: list[str], modalities=MODALITIES) -> None:
    """The ``dataset.json`` of an MSD or nnU-Net folder (nothing for the BraTS layouts)."""
    if layout in SUFFIXES:
        return
    order = [m for m in _MSD_CHANNELS if m in modalities]
    names = {i: _JSON_NAMES[m] for i, m in enumerate(order)}
    if layout == "msd":
        meta = {
            "name": "BRATS",
            "tensorImageSize": "4D",
            "modality": {str(i): n for i, n in names.items()},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": len(sids),
            "training": [{"image": f"./imagesTr/{s}.nii.gz", "label": f"./labelsTr/{s}.nii.gz"} for s in sids],
        }
    else:  # nnU-Net v2, with the region labels its BraTS conversion (Dataset137) uses
        meta = {
            "channel_names": {str(i): n for i, n in names.items()},
            "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
            "regions_class_order": [1, 2, 3],
            "numTraining": len(sids),
            "file_ending": ".nii.gz",
        }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
