"""Show a few generated phantom slices (four contrasts, the BraTS labels, the site) as one PNG.

Usage: python scripts/render_phantom.py [--data data/brain_phantom] [--out docs/phantom.png]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from segbench.data.brats import MODALITIES, load_brats, read_sites  # noqa: E402

LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.8), (0.2, 0.8, 0.2, 0.5), (0, 0, 0, 0), (1, 1, 0, 0.8)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/brain_phantom")
    parser.add_argument("--out", default="docs/phantom.png")
    parser.add_argument("--subjects", type=int, default=3)
    args = parser.parse_args()
    volumes = load_brats(args.data, MODALITIES)[: args.subjects]
    sites = read_sites(args.data)
    fig, axes = plt.subplots(len(volumes), 5, figsize=(12, 2.8 * len(volumes)), squeeze=False)
    for row, volume in zip(axes, volumes):
        z = volume.box[0] + int(np.argmax((volume.labels > 0).sum(axis=(1, 2))))  # the slice with most tumour
        images, labels = volume.slice(z)
        for ax, m, image in zip(row, MODALITIES, images):
            ax.imshow(image.astype(np.float32), cmap="gray")
            ax.set_title(f"{volume.subject[-5:]} ({sites.get(volume.subject, 'site ?')}) {m}, z={z}", fontsize=9)
        row[4].imshow(images[1].astype(np.float32), cmap="gray")
        row[4].imshow(labels, cmap=LABEL_COLOURS, vmin=0, vmax=4, interpolation="nearest")
        row[4].set_title("seg: 1 necrosis (red), 2 oedema (green), 4 enhancing (yellow)", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
