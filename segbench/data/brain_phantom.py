"""Brain-MRI tumour phantoms in the BraTS 2020/2021 on-disk layout, built from MNI152 templates.

Tissue maps (grey matter, white matter, CSF = brain mask minus both) come from the MNI152 2009
templates that nilearn ships inside its package. Each subject gets a smooth random deformation,
one to three connected gliomas (necrotic core inside an enhancing rim inside oedema) whose
whole-tumour volume follows a BraTS-like lognormal, and four contrasts derived from the tissue
maps. Subjects belong to simulated sites: a site's subjects share a protocol (contrast table,
intensity scale, bias field, noise, blur), so subjects differ the way BraTS' centres do.
Everything is drawn from one seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from segbench.data.brats import SITES_FILE
from segbench.data.layout_writers import subject_exists, subject_id, write_index, write_subject
from segbench.data.layouts import LAYOUTS
from segbench.errors import invalid_choice
from segbench.io import write_text

MODALITIES = ("t1", "t1ce", "t2", "flair")
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4

# Relative signal of each tissue per modality, chosen so each contrast looks like its kind:
# CSF bright in T2 and dark in FLAIR, oedema bright in T2/FLAIR, the enhancing rim bright in T1ce.
#            background  CSF   GM    WM   necrosis oedema enhancing
CONTRAST = {
    "t1": (0.0, 0.25, 0.55, 0.80, 0.30, 0.45, 0.55),
    "t1ce": (0.0, 0.25, 0.55, 0.80, 0.30, 0.45, 1.00),
    "t2": (0.0, 1.00, 0.60, 0.40, 0.90, 0.85, 0.65),
    "flair": (0.0, 0.10, 0.60, 0.45, 0.40, 0.95, 0.75),
}


@dataclass(frozen=True)
class PhantomConfig:
    """How many subjects, at which resolution, and how varied.

    Args:
        subjects: number of subject folders (assigned to sites in turn).
        sites: simulated scanners/protocols; a site's subjects share a contrast table, intensity
            scale, bias-field strength, noise level and blur, as BraTS' contributing centres do.
        voxel_mm: isotropic voxel size; 2 mm keeps a 2-core CPU fast (1 mm is BraTS' own).
        seed: the same seed writes the same files.
        max_lesions: each subject gets 1..max_lesions connected lesions.
        wt_volume_ml: median and log-standard deviation of the whole-tumour volume (lognormal, mL),
            clipped to ``wt_volume_range_ml``; see data/README.md for where the figures come from.
        deform_mm: amplitude of the smooth random deformation.
    """

    subjects: int = 48
    sites: int = 3
    voxel_mm: int = 2
    seed: int = 0
    max_lesions: int = 3
    wt_volume_ml: tuple[float, float] = (80.0, 0.6)
    wt_volume_range_ml: tuple[float, float] = (10.0, 250.0)
    deform_mm: float = 4.0
    prefix: str = "BraTS2021"


@dataclass(frozen=True)
class Protocol:
    """One site's acquisition: what differs between BraTS' contributing centres."""

    contrast: dict  # modality -> (7,) tissue signal, the CONTRAST table jittered per site
    scale: dict  # modality -> overall intensity scale (scanner gain / reconstruction units)
    bias: float  # strength of the multiplicative bias field
    noise: float  # Rician noise level relative to white matter
    blur: float  # Gaussian blur in voxels (slice thickness, reconstruction filter)


def site_protocol(cfg: PhantomConfig, site: int) -> Protocol:
    """The protocol of ``site``, a pure function of (seed, site)."""
    rng = np.random.default_rng([cfg.seed, 1000 + site])
    contrast = {m: tuple(np.asarray(CONTRAST[m]) * rng.uniform(0.75, 1.25, 7)) for m in MODALITIES}
    scale = {m: float(np.exp(rng.uniform(np.log(0.4), np.log(2.5)))) for m in MODALITIES}
    return Protocol(
        contrast,
        scale,
        bias=float(rng.uniform(0.1, 0.6)),
        noise=float(rng.uniform(0.01, 0.07)),
        blur=float(rng.uniform(0.0, 1.0)),
    )


def site_of(index: int, cfg: PhantomConfig) -> int:
    return index % max(1, cfg.sites)


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
    coords = [(g - c) / k + c + amplitude_vox * _smooth_field(rng, shape, 12) for g, c, k in zip(grid, center, scale)]
    return np.stack([ndimage.map_coordinates(m, coords, order=1, mode="nearest") for m in maps])


def _lesion_volumes_ml(rng, cfg: PhantomConfig) -> list[float]:
    """Whole-tumour volume (lognormal, clipped) shared among 1..max_lesions lesions."""
    median, log_sd = cfg.wt_volume_ml
    total = float(np.clip(median * np.exp(log_sd * rng.standard_normal()), *cfg.wt_volume_range_ml))
    n = int(rng.integers(1, cfg.max_lesions + 1))
    return (total * rng.dirichlet(np.full(n, 2.0))).tolist()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def _tumor_labels(rng, brain: np.ndarray, wm: np.ndarray, cfg: PhantomConfig) -> np.ndarray:
    """Label volume with 1..max_lesions connected gliomas: necrosis inside enhancing rim inside oedema.

    Each lesion is a bounded, smoothly perturbed ellipsoid sized to its share of the whole-tumour
    volume; the perturbation is at most +-20 % of the radius, so a lesion stays one piece, and
    what the brain mask cuts off is reduced to its largest connected piece.
    """
    shape = brain.shape
    labels = np.zeros(shape, np.uint8)
    candidates = np.argwhere(ndimage.binary_erosion(wm > 0.6, iterations=2))
    if len(candidates) == 0:
        return labels
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    voxel_ml = cfg.voxel_mm**3 / 1000.0
    for volume_ml in _lesion_volumes_ml(rng, cfg):
        center = candidates[rng.integers(len(candidates))]
        radius = (3 * volume_ml / voxel_ml / (4 * np.pi)) ** (1 / 3)  # oedema radius in voxels
        axes = radius * rng.uniform(0.8, 1.2, 3)
        dist = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, axes)))
        dist *= 1 + 0.2 * np.tanh(_smooth_field(rng, shape, max(3.0, radius)))  # bounded irregular outline
        lesion = _largest_component((dist < 1.0) & (brain > 0.5))
        rim = rng.uniform(0.45, 0.75)  # enhancing tumour's outer radius, relative to the oedema's
        core = rim * rng.uniform(0.0, 0.7)  # some tumours have no necrotic core
        labels[lesion & (labels == 0)] = OEDEMA
        labels[lesion & (dist < rim)] = ENHANCING
        labels[lesion & (dist < core)] = NECROSIS
    return labels


def _contrast(rng, maps: np.ndarray, labels: np.ndarray, modality: str, protocol: Protocol) -> np.ndarray:
    # Subject-level jitter on top of the site's table: patients differ less than protocols do.
    tissue = np.asarray(protocol.contrast[modality], np.float32) * rng.uniform(0.95, 1.05, 7).astype(np.float32)
    image = np.tensordot(tissue[:4], maps, axes=1)
    for index, label in ((4, NECROSIS), (5, OEDEMA), (6, ENHANCING)):
        part = ndimage.gaussian_filter((labels == label).astype(np.float32), 0.6)
        image = image * (1 - part) + tissue[index] * part
    if protocol.blur > 0.05:
        image = ndimage.gaussian_filter(image, protocol.blur)
    bias = np.exp(protocol.bias * _smooth_field(rng, image.shape, 40) / 2)
    sigma = protocol.noise * rng.uniform(0.8, 1.2) * tissue[3]
    noisy = np.hypot(
        image * bias + sigma * rng.standard_normal(image.shape, np.float32),
        sigma * rng.standard_normal(image.shape, np.float32),
    )
    gain = protocol.scale[modality] * rng.uniform(0.9, 1.1)
    return np.where(maps[0] > 0.98, 0, noisy * gain)  # skull-stripped: no signal outside the head


def make_subject(index: int, maps: np.ndarray, cfg: PhantomConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Images per modality (int16, white matter near 1000 x the site's scale) and the label volume."""
    rng = np.random.default_rng([cfg.seed, index])
    protocol = site_protocol(cfg, site_of(index, cfg))
    warped = _deform(rng, maps, cfg.deform_mm / cfg.voxel_mm)
    brain = 1 - warped[0]
    labels = _tumor_labels(rng, brain, warped[3], cfg)
    # The tumour displaces tissue: inside it, the tissue maps give way to the tumour classes.
    images = {
        m: (_contrast(rng, warped, labels, m, protocol) * 1000).clip(0, 32767).astype(np.int16) for m in MODALITIES
    }
    return images, labels


def write_brain_phantom(
    out: str | os.PathLike,
    cfg: PhantomConfig = PhantomConfig(),
    progress=None,
    force: bool = False,
    layout: str = "brats2021",
) -> tuple[Path, int]:
    """Write ``cfg.subjects`` subjects under ``out`` in ``layout`` (any of ``segbench.data.layouts``:
    BraTS 2021 or 2023 naming, MSD Task01, nnU-Net raw); the same volumes whichever the layout.

    Each subject is written under temporary names and renamed when complete, so an interrupted
    run leaves no half-written subject behind; subjects already there are kept unless ``force``
    (then each is replaced once its new version is complete).

    Returns:
        ``(out, written)``: the folder and how many subjects this call wrote (the rest existed).
    """
    if layout not in LAYOUTS:
        raise invalid_choice("--layout", layout, LAYOUTS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps, affine = load_tissue_maps(cfg.voxel_mm)
    # BraTS 2023 names its subjects BraTS-GLI-...; a prefix the caller chose is kept.
    prefix = "BraTS-GLI" if layout == "brats2023" and cfg.prefix == PhantomConfig.prefix else cfg.prefix
    sids = [subject_id(layout, prefix, i) for i in range(cfg.subjects)]
    written = 0
    for i, sid in enumerate(sids):
        if subject_exists(layout, out, sid) and not force:
            continue
        images, labels = make_subject(i, maps, cfg)
        write_subject(layout, out, sid, images, labels, affine)
        written += 1
        if progress:
            progress(i + 1, cfg.subjects)
    write_index(layout, out, sids)
    rows = "".join(f"{sid}\tsite{site_of(i, cfg)}\n" for i, sid in enumerate(sids))
    write_text(out / SITES_FILE, "subject\tsite\n" + rows)
    return out, written
