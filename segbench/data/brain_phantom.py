"""Brain-MRI tumour phantoms in the BraTS 2020/2021 on-disk layout, built from MNI152 templates.

Tissue maps (grey matter, white matter, CSF = brain mask minus both) come from the MNI152 2009
templates that nilearn ships inside its package. Each subject gets a smooth random deformation,
one or more irregular tumours (necrotic core, enhancing rim, oedema), four contrasts derived
from the tissue maps, a bias field and Rician noise. Everything is drawn from one seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

MODALITIES = ("t1", "t1ce", "t2", "flair")
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4

# Relative signal of each tissue per modality, chosen so each contrast looks like its kind:
# CSF bright in T2 and dark in FLAIR, oedema bright in T2/FLAIR, the enhancing rim bright in T1ce.
#            background  CSF   GM    WM   necrosis oedema enhancing
CONTRAST = {
    "t1":   (0.0,       0.25, 0.55, 0.80, 0.30,    0.45,  0.55),
    "t1ce": (0.0,       0.25, 0.55, 0.80, 0.30,    0.45,  1.00),
    "t2":   (0.0,       1.00, 0.60, 0.40, 0.90,    0.85,  0.65),
    "flair": (0.0,      0.10, 0.60, 0.45, 0.40,    0.95,  0.75),
}


@dataclass(frozen=True)
class PhantomConfig:
    """How many subjects, at which resolution, and how varied.

    Args:
        subjects: number of subject folders.
        voxel_mm: isotropic voxel size; 2 mm keeps a 2-core CPU fast (1 mm is BraTS' own).
        seed: the same seed writes the same files.
        max_tumors: each subject gets 1..max_tumors tumours.
        tumor_radius_mm: range of the tumour (core + rim) radius.
        deform_mm: amplitude of the smooth random deformation.
        noise: Rician noise level relative to white matter.
        bias: strength of the multiplicative bias field.
    """

    subjects: int = 20
    voxel_mm: int = 2
    seed: int = 0
    max_tumors: int = 2
    tumor_radius_mm: tuple[float, float] = (8.0, 18.0)
    deform_mm: float = 4.0
    noise: float = 0.03
    bias: float = 0.25
    prefix: str = "BraTS2021"


def load_tissue_maps(voxel_mm: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, X, Y, Z) maps of background, CSF, GM, WM probabilities, and the affine."""
    from nilearn import datasets

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=voxel_mm).dataobj, np.float32)
    wm_img = datasets.load_mni152_wm_template(resolution=voxel_mm)
    wm = np.asarray(wm_img.dataobj, np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=voxel_mm).dataobj, np.float32)
    mask = ndimage.gaussian_filter(mask, 0.7)  # soft edge, as a partial-volume boundary
    gm, wm = gm.clip(0, 1), wm.clip(0, 1)
    csf = (mask - gm - wm).clip(0, 1)
    background = (1 - gm - wm - csf).clip(0, 1)
    return np.stack([background, csf, gm, wm]), wm_img.affine


def _smooth_field(rng: np.random.Generator, shape, scale_vox: float) -> np.ndarray:
    """Zero-mean, unit-variance random field with structures about ``scale_vox`` voxels wide."""
    import torch
    from torch.nn.functional import interpolate

    coarse = [max(2, int(round(s / scale_vox))) + 1 for s in shape]
    noise = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    # Trilinear upsampling of a coarse grid (torch's is ~50x faster than ndimage.zoom here).
    field = interpolate(noise, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-6)


def _deform(rng, maps: np.ndarray, amplitude_vox: float) -> np.ndarray:
    shape = maps.shape[1:]
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    scale = 1 + rng.uniform(-0.06, 0.06, 3)  # head size
    center = [s / 2 for s in shape]
    coords = [(g - c) / k + c + amplitude_vox * _smooth_field(rng, shape, 12)
              for g, c, k in zip(grid, center, scale)]
    return np.stack([ndimage.map_coordinates(m, coords, order=1, mode="nearest") for m in maps])


def _tumor_labels(rng, brain: np.ndarray, wm: np.ndarray, cfg: PhantomConfig) -> np.ndarray:
    """Integer label volume with irregular tumours grown from white-matter seeds."""
    shape = brain.shape
    labels = np.zeros(shape, np.uint8)
    candidates = np.argwhere(ndimage.binary_erosion(wm > 0.6, iterations=3))
    if len(candidates) == 0:
        return labels
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    for _ in range(int(rng.integers(1, cfg.max_tumors + 1))):
        center = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(*cfg.tumor_radius_mm) / cfg.voxel_mm
        axes = radius * rng.uniform(0.75, 1.25, 3)
        dist = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, axes)))
        dist *= 1 + 0.25 * _smooth_field(rng, shape, max(3.0, radius / 2))  # irregular outline
        core = rng.uniform(0.0, 0.55)  # some tumours have no necrotic core
        oedema = dist < rng.uniform(1.4, 2.0)
        labels[oedema & (labels == 0)] = OEDEMA
        labels[dist < 1.0] = ENHANCING
        labels[dist < core] = NECROSIS
    labels[brain < 0.5] = 0
    return labels


def _contrast(rng, maps: np.ndarray, labels: np.ndarray, modality: str, cfg: PhantomConfig) -> np.ndarray:
    tissue = np.asarray(CONTRAST[modality], np.float32) * rng.uniform(0.9, 1.1, 7).astype(np.float32)
    image = np.tensordot(tissue[:4], maps, axes=1)
    for index, label in ((4, NECROSIS), (5, OEDEMA), (6, ENHANCING)):
        part = ndimage.gaussian_filter((labels == label).astype(np.float32), 0.6)
        image = image * (1 - part) + tissue[index] * part
    bias = np.exp(cfg.bias * _smooth_field(rng, image.shape, 40) / 2)
    sigma = cfg.noise * tissue[3]
    noisy = np.hypot(image * bias + sigma * rng.standard_normal(image.shape, np.float32),
                     sigma * rng.standard_normal(image.shape, np.float32))
    return np.where(maps[0] > 0.98, 0, noisy)  # skull-stripped: no signal outside the head


def make_subject(index: int, maps: np.ndarray, cfg: PhantomConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Images per modality (int16, white matter near 1000) and the BraTS label volume of one subject."""
    rng = np.random.default_rng([cfg.seed, index])
    warped = _deform(rng, maps, cfg.deform_mm / cfg.voxel_mm)
    brain = 1 - warped[0]
    labels = _tumor_labels(rng, brain, warped[3], cfg)
    # The tumour displaces tissue: inside it, the tissue maps give way to the tumour classes.
    images = {m: (_contrast(rng, warped, labels, m, cfg) * 1000).clip(0, 32767).astype(np.int16)
              for m in MODALITIES}
    return images, labels


def write_brain_phantom(out: str | os.PathLike, cfg: PhantomConfig = PhantomConfig(), progress=None) -> Path:
    """Write ``cfg.subjects`` BraTS-layout subject folders under ``out``; returns ``out``.

    Each subject folder is written to a temporary name and renamed when complete, so an
    interrupted run leaves no half-written subject behind.
    """
    import nibabel as nib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps, affine = load_tissue_maps(cfg.voxel_mm)
    for i in range(cfg.subjects):
        sid = f"{cfg.prefix}_{i:05d}"
        if (out / sid).is_dir():
            continue
        images, labels = make_subject(i, maps, cfg)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", dir=out))
        try:
            for modality, image in images.items():
                nib.save(nib.Nifti1Image(image, affine), tmp / f"{sid}_{modality}.nii.gz")
            nib.save(nib.Nifti1Image(labels, affine), tmp / f"{sid}_seg.nii.gz")
            os.replace(tmp, out / sid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if progress:
            progress(i + 1, cfg.subjects)
    return out
