"""PASCAL VOC 2012 segmentation through torchvision's own readers (never downloading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.data.common import FITS, SegmentationDataset, check_masks
from segbench.data.voc_phantom import BORDER, VOC_CLASSES
from segbench.errors import SegbenchError, invalid_choice

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class VOCSegmentationData(SegmentationDataset):
    """VOC 2012 (``root/VOCdevkit/VOC2012``), optionally with SBD's extra training images.

    Args:
        root: the folder holding ``VOCdevkit`` (the real data or ``segbench make-data voc-phantom``).
        split: "train" (VOC train minus a held-out share), "val" (that held-out share of VOC train,
            for selection) or "test" (VOC's own val set, for reporting only).
        val_fraction: share of VOC train held out for selection.
        size: training crop (H, W); images are padded with label 255 where smaller. Validation
            uses whole images when ``val_whole_images`` (then use a validation batch of 1).
        sbd_root: folder of the SBD release (``img/``, ``cls/``, ``train_noval.txt``); adds its
            training images, as the FCN paper does.
        augment: flips, a small affine and brightness/contrast (training only).
        fit: how an image meets ``size``: "pad" (pad with label 255 and random-crop, pixels keep
            their scale, as the FCN paper) or "resize" (scaled to ``size``, masks by nearest neighbour).
    """

    target_kind = "multiclass"
    in_channels = 3

    def __init__(
        self,
        root: str,
        split: str = "train",
        size=(256, 256),
        augment: bool = True,
        sbd_root: str | None = None,
        val_whole_images: bool = True,
        year: str = "2012",
        val_fraction: float = 0.1,
        fit: str = "pad",
        seed: int = 0,
    ):
        from torchvision.datasets import SBDataset, VOCSegmentation

        base = Path(root) / "VOCdevkit" / f"VOC{year}"
        if not base.is_dir():
            raise SegbenchError(
                f"data.root={root!r} has no VOCdevkit/VOC{year}; make a phantom with "
                f"'segbench make-data voc-phantom --out {root}' or see data/README.md"
            )
        if fit not in FITS:
            raise invalid_choice("data.fit", fit, FITS)
        if split not in ("train", "val", "test"):
            raise SegbenchError(f"split={split!r} is not valid; choose one of: train, val, test")
        if not 0 < float(val_fraction) < 1:
            raise SegbenchError(f"data.val_fraction={val_fraction} must be between 0 and 1 (a share of VOC train)")
        self.parts = [
            VOCSegmentation(str(root), year=year, image_set="val" if split == "test" else "train", download=False)
        ]
        self.keep: list[int] | None = None  # indices into the first part; None: all of it
        if split != "test":
            n = len(self.parts[0])
            held = set(np.random.default_rng(seed).permutation(n)[: max(1, int(round(n * val_fraction)))].tolist())
            self.keep = [i for i in range(n) if (i in held) == (split == "val")]
        if sbd_root and split == "train":
            if not Path(sbd_root).is_dir():
                raise SegbenchError(f"data.sbd_root={sbd_root!r} does not exist (see data/README.md)")
            self.parts.append(SBDataset(str(sbd_root), image_set="train_noval", mode="segmentation", download=False))
        voc = self.parts[0]  # VOC's PNG masks hold class ids 0-20 and 255 (border, ignored)
        check_masks(
            tuple(zip(map(Path, voc.images), map(Path, voc.targets))), frozenset([*range(len(VOC_CLASSES)), BORDER]), ""
        )
        sizes = [len(self.keep) if self.keep is not None else len(self.parts[0])] + [len(p) for p in self.parts[1:]]
        self.offsets = np.cumsum([0] + sizes)
        train = split == "train"
        crop = tuple(size) if (train or not val_whole_images) else None
        super().__init__(
            size=crop, augment=augment and train, pad_label=BORDER, random_crop=True, resize=fit == "resize"
        )

    num_outputs = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, i: int):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = i - int(self.offsets[part])
        if part == 0 and self.keep is not None:
            j = self.keep[j]
        image, mask = self.parts[part][j]
        return np.asarray(image.convert("RGB")), np.asarray(mask, dtype=np.uint8), None

    def finish(self, image, labels, extra):
        image = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        return image, labels.astype(np.int64)
