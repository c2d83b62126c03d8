"""Draw which values each normalizer averages over, as in the Group Normalization paper's figure 2.

Each panel is the (N, C, H*W) block of a conv layer's output; the shaded cells form one set that
shares a mean and variance. Usage: python scripts/plot_norm_axes.py [--out docs/norm_axes.png]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

N, C, HW = 4, 6, 5
# For each norm: a function (n, c) -> True when cell (n, c, all H*W) is in the shaded set.
PANELS = {
    "Batch norm\n(per C, over N, H, W)": lambda n, c: c == 0,
    "Layer norm\n(per N, over C, H, W)": lambda n, c: n == 0,
    "Instance norm\n(per N and C, over H, W)": lambda n, c: n == 0 and c == 0,
    "Group norm\n(per N and group, over C/G, H, W)": lambda n, c: n == 0 and c < 2,
}


def cube(ax, x, y, z, colour):
    corners = np.array(
        [
            [x, y, z],
            [x + 1, y, z],
            [x + 1, y + 1, z],
            [x, y + 1, z],
            [x, y, z + 1],
            [x + 1, y, z + 1],
            [x + 1, y + 1, z + 1],
            [x, y + 1, z + 1],
        ]
    )
    faces = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [0, 3, 7, 4]]
    ax.add_collection3d(
        Poly3DCollection([corners[f] for f in faces], facecolors=colour, edgecolors="0.4", linewidths=0.3)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/norm_axes.png")
    args = parser.parse_args()
    fig = plt.figure(figsize=(14, 4))
    for i, (title, shaded) in enumerate(PANELS.items()):
        ax = fig.add_subplot(1, len(PANELS), i + 1, projection="3d")
        for n in range(N):
            for c in range(C):
                for s in range(HW):
                    cube(ax, c, n, s, (0.27, 0.51, 0.71, 0.9) if shaded(n, c) else (0.95, 0.95, 0.95, 0.35))
        ax.set(xlim=(0, C), ylim=(0, N), zlim=(0, HW), xlabel="C", ylabel="N", zlabel="H, W")
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        ax.view_init(elev=20, azim=-55)
        ax.set_title(title, fontsize=10)
    fig.suptitle("Shaded: the values that share one mean and variance (one set of many, for C=6, G=3)")
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
