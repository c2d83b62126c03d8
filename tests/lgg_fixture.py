"""A tiny folder in the Kaggle LGG layout, written by the tests (the repository ships no patient data).

Each patient is ``TCGA_<site>_<id>_<date>/<folder>_<n>.tif`` with ``<folder>_<n>_mask.tif``: RGB slices
whose intensities differ by patient and channel, a blob of tumour that moves along z, and slice
``n``'s number written into the pixel at (0, 0) of channel 0, so a test can read which slice it got.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATIENTS = {
    "TCGA_CS_4941_19960909": 12,
    "TCGA_CS_4942_19970222": 11,
    "TCGA_DU_5849_19950405": 12,
    "TCGA_DU_5851_19950428": 10,
    "TCGA_HT_7602_19951103": 12,
    "TCGA_HT_7605_19950916": 11,
    "TCGA_FG_5962_20000626": 10,
    "TCGA_FG_6688_20020215": 12,
}


def blob_mask(n: int, slices: int, size: int) -> np.ndarray:
    """The tumour of slice ``n`` (1-based): a disc in the middle slices whose centre moves with ``n``."""
    mask = np.zeros((size, size), np.uint8)
    if slices // 4 < n <= slices - slices // 4:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = size // 3 + (n * size) // (2 * slices), size // 2
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2] = 255
    return mask


def write_lgg(
    root: Path,
    patients: dict[str, int] | None = None,
    size: int = 32,
    compression: str = "tiff_adobe_deflate",
    seed: int = 0,
) -> Path:
    """Write the patients (folder name -> slices); ``compression``: "tiff_adobe_deflate" (as the shared
    copy) or "raw" (as downloaded from Kaggle)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k, (name, slices) in enumerate((patients or PATIENTS).items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        gain = np.array([40, 80, 120]) * (1 + k % 3)  # each patient and channel its own intensity scale
        for n in range(1, slices + 1):
            mask = blob_mask(n, slices, size)
            image = rng.integers(0, 30, (size, size, 3)) + (mask[..., None] > 0) * gain * 0.5 + gain * 0.3
            image = np.clip(image, 0, 255).astype(np.uint8)
            image[0, 0, 0] = n
            Image.fromarray(image, "RGB").save(folder / f"{name}_{n}.tif", compression=compression)
            Image.fromarray(mask, "L").save(folder / f"{name}_{n}_mask.tif", compression=compression)
    return root
