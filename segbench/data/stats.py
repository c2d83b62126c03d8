"""``segbench data-stats ROOT``: the figures that say whether a brain-MRI folder (any layout) looks like BraTS.

Works on real BraTS and on the phantom alike: subjects, slices, how much of the data is tumour,
how many separate lesions a subject has, whole-tumour volumes, and how much image intensity
differs between subjects of a site and between sites (where a ``sites.tsv`` names them).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage

from segbench.data.brats import REGION_LABELS, read_sites, select_slices
from segbench.data.brats_volume import read_subject
from segbench.data.layouts import MODALITIES, Subject, find_layout


def subject_stats(subject: Subject, min_brain_fraction: float = 0.05, modalities=MODALITIES) -> dict:
    """Tumour and intensity figures of one subject (raw intensities, before any normalization)."""
    sid = subject.id
    arrays, seg, zooms = read_subject(subject, tuple(modalities))
    images = dict(zip(modalities, arrays))
    brain = np.any(np.stack(list(images.values())) > 0, axis=0)
    wt = np.isin(seg, REGION_LABELS["WT"])
    voxel_ml = float(np.prod(zooms)) / 1000.0
    brain_per_slice = brain.mean(axis=(0, 1))  # axial slices are the last axis of a RAS volume
    slices = np.flatnonzero(brain_per_slice >= min_brain_fraction)
    tumour_slices = wt[:, :, slices].any(axis=(0, 1))
    _, lesions = ndimage.label(wt, structure=np.ones((3, 3, 3)))
    return {
        "subject": sid,
        "brain_slices": len(slices),
        "tumour_slices": int(tumour_slices.sum()),
        "tumour_per_slice": tumour_slices,
        "wt_voxels": int(wt[:, :, slices].sum()),
        "pixels": int(brain[:, :, slices].size),
        "lesions": int(lesions),
        "wt_ml": float(wt.sum() * voxel_ml),
        # Median raw intensity inside the brain, per modality: what a protocol's gain changes.
        "median": {m: float(np.median(v[brain])) if brain.any() else 0.0 for m, v in images.items()},
        # Contrast between tumour and normal brain, in units of the brain's spread: what a protocol's
        # contrast table changes, and what a per-volume z-score does not remove.
        "contrast": {
            m: float((v[wt].mean() - v[brain & ~wt].mean()) / (v[brain].std() + 1e-6)) if wt.any() else 0.0
            for m, v in images.items()
        },
    }


def data_stats(root: str, tumor_fraction: float | None = 0.5, min_brain_fraction: float = 0.05) -> str:
    """A plain-text table of the folder's figures (also what ``make-data`` prints at its end)."""
    layout = find_layout(root)
    modalities = layout.modalities
    sites = read_sites(root)
    rows = [subject_stats(s, min_brain_fraction, modalities) for s in layout.subjects]
    rng = np.random.default_rng(0)
    used = [select_slices(r["tumour_per_slice"], tumor_fraction, rng) for r in rows]
    n_used = sum(len(u) for u in used)
    n_used_tumour = sum(int(r["tumour_per_slice"][u].sum()) for r, u in zip(rows, used))
    lesions = np.array([r["lesions"] for r in rows])
    volumes = np.array([r["wt_ml"] for r in rows])
    pct = np.percentile(volumes, [10, 25, 50, 75, 90])
    lines = [
        f"folder: {layout.summary()}",
        f"subjects: {len(rows)}; sites: {len(set(sites.values())) if sites else 'unknown (no sites.tsv)'}",
        f"brain slices (>= {min_brain_fraction:.0%} brain): {sum(r['brain_slices'] for r in rows)}; "
        f"holding tumour: {sum(r['tumour_slices'] for r in rows) / max(1, sum(r['brain_slices'] for r in rows)):.1%}",
        f"slices used for training at data.tumor_fraction={tumor_fraction}: {n_used} "
        f"({n_used_tumour / max(1, n_used):.1%} with tumour)",
        f"positive-pixel fraction (whole tumour, brain slices): "
        f"{sum(r['wt_voxels'] for r in rows) / max(1, sum(r['pixels'] for r in rows)):.2%}",
        f"lesions per subject (3-D connected pieces of whole tumour): median {np.median(lesions):.0f}, "
        f"min {lesions.min()}, max {lesions.max()}; subjects with 1-3: {np.mean((lesions >= 1) & (lesions <= 3)):.0%}",
        "whole-tumour volume, mL, percentiles 10/25/50/75/90: " + " / ".join(f"{v:.0f}" for v in pct),
        "",
        "per-site intensity (raw median inside the brain; CV = std / mean across the site's subjects)",
        "and tumour-vs-brain contrast (in brain standard deviations, mean over the site's subjects):",
        "| site | subjects | "
        + " | ".join(f"{m} median (CV)" for m in modalities)
        + " | "
        + " | ".join(f"{m} contrast" for m in modalities)
        + " |",
        "|---" * (2 + 2 * len(modalities)) + "|",
    ]
    groups = defaultdict(list)
    for r in rows:
        groups[sites.get(r["subject"], "all")].append(r)
    for site in sorted(groups):
        members = groups[site]
        cells = []
        for m in modalities:
            med = np.array([r["median"][m] for r in members])
            cells.append(f"{med.mean():.0f} ({med.std() / max(med.mean(), 1e-6):.2f})")
        cells += [f"{np.mean([r['contrast'][m] for r in members]):+.2f}" for m in modalities]
        lines.append(f"| {site} | {len(members)} | " + " | ".join(cells) + " |")
    if len(groups) > 1:
        means = {m: np.array([np.mean([r["median"][m] for r in g]) for g in groups.values()]) for m in modalities}
        lines.append(
            "between-site CV of the site means: "
            + ", ".join(f"{m} {v.std() / max(v.mean(), 1e-6):.2f}" for m, v in means.items())
        )
    return "\n".join(lines)
