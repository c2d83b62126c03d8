"""A small PASCAL VOC 2012 look-alike: textured objects of the 20 classes on textured backgrounds.

Written in the VOCdevkit layout (JPEG images, palette-PNG class masks with 255 borders around
objects, ImageSets/Segmentation/{train,val}.txt) so ``torchvision.datasets.VOCSegmentation``
and segbench's ``data=voc`` read it exactly as they read the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segbench.io import atomic_write, write_text

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
BORDER = 255


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved class index), flattened for ``Image.putpalette``."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _texture(rng, h: int, w: int, colour, frequency: float) -> np.ndarray:
    """A colour with a stripe pattern of the given frequency and some noise: a class's look."""
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * frequency)
    base = np.array(colour, np.float32)[None, None] * (0.8 + 0.2 * stripes[..., None])
    return base + rng.normal(0, 12, (h, w, 3))


def make_image(rng, height: int, width: int):
    """(RGB uint8 image, uint8 class mask with 255 borders)."""
    background = _texture(rng, height, width, rng.uniform(60, 200, 3), rng.uniform(0.02, 0.1))
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(VOC_CLASSES)))
        hue = np.array(voc_palette()[3 * cls : 3 * cls + 3], np.float32) * 0.7 + 40  # class colour
        w, h = int(rng.uniform(0.2, 0.6) * width), int(rng.uniform(0.2, 0.6) * height)
        x0, y0 = int(rng.uniform(0, width - w)), int(rng.uniform(0, height - h))
        shape = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(shape)
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=255)
        else:
            points = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=255)
        texture = Image.fromarray(_texture(rng, height, width, hue, 0.3 + 0.05 * cls).clip(0, 255).astype(np.uint8))
        image.paste(texture, (0, 0), shape)
        mask.paste(cls, (0, 0), shape)
    # VOC marks object outlines (about 5 px) as 255: neither class, ignored by loss and metric.
    labels = np.asarray(mask)
    edges = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) != np.asarray(mask.filter(ImageFilter.MinFilter(5)))
    labels = np.where(edges, BORDER, labels).astype(np.uint8)
    return np.asarray(image), labels


def write_voc_phantom(out: str | Path, images: int = 60, val_fraction: float = 0.25, seed: int = 0) -> Path:
    """Write ``out/VOCdevkit/VOC2012`` with ``images`` image/mask pairs; returns ``out``."""
    out = Path(out)
    voc = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = voc_palette()
    names = []
    for i in range(images):
        name = f"2012_{i:06d}"
        image, labels = make_image(rng, int(rng.integers(120, 201)), int(rng.integers(140, 241)))
        atomic_write(
            voc / "JPEGImages" / f"{name}.jpg", lambda p, a=image: Image.fromarray(a).save(p, format="JPEG", quality=92)
        )
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette(palette)
        atomic_write(voc / "SegmentationClass" / f"{name}.png", lambda p, m=mask: m.save(p, format="PNG"))
        names.append(name)
    n_val = max(1, int(round(images * val_fraction)))
    write_text(voc / "ImageSets/Segmentation/train.txt", "\n".join(names[n_val:]) + "\n")
    write_text(voc / "ImageSets/Segmentation/val.txt", "\n".join(names[:n_val]) + "\n")
    return out
