"""Plain 2D image/mask folders (e.g. Kaggle's LGG brain-MRI set): PNG, JPEG or TIFF pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.common import FITS, IGNORE_INDEX, SegmentationDataset, check_masks, natural_key, subject_split
from segbench.errors import SegbenchError, invalid_choice

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LAYOUTS = ("auto", "suffix", "parallel")


def find_pairs(root: Path, layout: str, mask_suffix: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ``x.tif`` + ``x_mask.tif`` ("suffix"), or ``images/x`` + ``masks/x`` ("parallel");
    "auto" is "parallel" when ``images/`` and ``masks/`` exist, else "suffix"."""
    if layout not in LAYOUTS:
        raise invalid_choice("data.layout", layout, LAYOUTS)
    if not root.is_dir():
        raise SegbenchError(f"data.root={str(root)!r} does not exist; see data/README.md for image/mask folders")
    parallel_dirs = (root / "images").is_dir() and (root / "masks").is_dir()
    if layout == "auto":
        layout = "parallel" if parallel_dirs else "suffix"
    pairs = []
    if layout == "suffix":
        files = [p for p in sorted(root.rglob("*"), key=natural_key) if p.suffix.lower() in EXTENSIONS]
        masks = {p for p in files if p.stem.endswith(mask_suffix)}
        for image in (p for p in files if p not in masks):
            mask = image.with_name(image.stem + mask_suffix + image.suffix)
            if mask not in masks:
                hint = (
                    "; the folder has images/ and masks/: set data.layout=parallel"
                    if parallel_dirs
                    else (f" (data.layout=suffix looks for <name>{mask_suffix}.<ext>; set data.mask_suffix)")
                )
                raise SegbenchError(f"{image} has no mask {mask.name}{hint}")
            pairs.append((image, mask))
    else:
        for image in (
            p for p in sorted((root / "images").rglob("*"), key=natural_key) if p.suffix.lower() in EXTENSIONS
        ):
            rel = image.relative_to(root / "images")
            candidates = [
                m for m in (root / "masks" / rel.parent).glob(rel.stem + ".*") if m.suffix.lower() in EXTENSIONS
            ]
            if not candidates:
                raise SegbenchError(f"{image} has no mask in {root / 'masks' / rel.parent}")
            pairs.append((image, candidates[0]))
    if not pairs:
        raise SegbenchError(f"no image/mask pairs under {root} (layout={layout})")
    return pairs


IGNORE = "ignore"  # a data.classes value: pixels of that mask value count in no loss and no metric


def _class_map(classes) -> tuple[dict[int, int], set[int]]:
    """``data.classes`` as ({mask value: class index}, {mask values to ignore}); refused when a key or
    value is neither a small integer nor ``ignore``."""
    out, ignored = {}, set()
    for key, value in (classes or {}).items():
        try:
            if str(value).lower() == IGNORE:
                ignored.add(int(key))
                continue
            out[int(key)] = int(value)
        except (TypeError, ValueError):
            raise SegbenchError(
                f"data.classes maps {key!r}: {value!r}; give mask value: class index or 'ignore', "
                "e.g. {0: 0, 1: 1, 255: ignore}"
            ) from None
        if out[int(key)] < 0 or not 0 <= int(key) < 65536:
            raise SegbenchError(
                f"data.classes maps {key!r}: {value!r}; mask values are 0-65535 and class indices at least 0"
            )
    return out, ignored


def _ignore_value(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise SegbenchError(
            f"data.ignore_index={value!r} must be a mask value 0-65535 (e.g. 255, VOC's border) or null"
        )
    return value


GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes of one-channel images


def folder_channels(images: list[Path]) -> int:
    """1 when every image is greyscale, else 3: a folder that mixes them is read as RGB throughout
    (grey images repeated into three channels, RGBA without its alpha, palettes expanded)."""
    modes = set()
    for path in images:
        try:
            with Image.open(path) as image:  # reads the header only
                modes.add(image.mode)
        except OSError as err:
            raise SegbenchError(f"{path} is not an image PIL can read ({err})") from None
    return 1 if modes <= GREY_MODES else 3


def read_image(path: Path, channels: int) -> np.ndarray:
    """(H, W, channels): greyscale kept at its bit depth, colour as RGB."""
    with Image.open(path) as image:
        if channels == 1:
            grey = image if image.mode in GREY_MODES - {"1", "LA"} else image.convert("L")
            return np.asarray(grey)[..., None]
        if image.mode in GREY_MODES - {"1", "LA", "L"}:  # 16-bit or float grey among colour images
            return np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=2)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class ImageMaskFolder(SegmentationDataset):
    """Image/mask pairs with a train/val/test split by subject (the file's parent folder) or by file.

    Args:
        root: the folder.
        layout: "auto" (parallel when images/ and masks/ exist, else suffix), "suffix" (``*_mask.*`` next to
            each image, as Kaggle LGG) or "parallel" (images/, masks/).
        classes: mask value -> class index (or "ignore"); None is binary (any non-zero value is foreground,
            one sigmoid output). With more than two classes the targets are class indices for ``loss=ce``.
        size: (H, W) images are centre-cropped or padded to.
        ignore_index: a mask value no loss or metric counts (VOC's 255 border), beside ``classes``.
        split_by: "folder" keeps each subject folder in one split (and scores it as one case);
            "file" splits files.
        fit: how images of another size meet ``size``: "pad" (zero-pad, centre-crop: pixels keep their
            scale) or "resize" (scaled, masks by nearest neighbour).
        val_fraction, test_fraction: shares of subjects (or files) for selection and for reporting.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        layout: str = "auto",
        mask_suffix: str = "_mask",
        classes: dict | None = None,
        size=(128, 128),
        augment: bool = True,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_by: str = "folder",
        fit: str = "pad",
        seed: int = 0,
        ignore_index: int | None = None,
    ):
        pairs = find_pairs(Path(root), layout, mask_suffix)
        key = (lambda p: str(p[0].parent)) if split_by == "folder" else (lambda p: str(p[0]))
        if split_by == "folder" and len({key(p) for p in pairs}) < 2:
            key = lambda p: str(p[0])  # noqa: E731 - one folder: split files instead
        chosen = subject_split(sorted({key(p) for p in pairs}), split, val_fraction, seed, test_fraction)
        self.pairs = [p for p in pairs if key(p) in chosen]
        self.cases = [key(p) for p in self.pairs]  # a subject folder's slices make one case
        self.classes, self.ignored = _class_map(classes)
        if _ignore_value(ignore_index) is not None:
            self.ignored.add(ignore_index)
        valid = frozenset(self.classes) | frozenset(self.ignored) if self.classes else None
        check_masks(
            tuple(pairs),
            valid,
            "; map every mask value to a class in data.classes, or set "
            "data.ignore_index (e.g. 255) for a border no metric counts"
            if valid
            else "",
        )
        multiclass = max(self.classes.values(), default=0) > 1  # class indices beyond 0/1
        self.target_kind = "multiclass" if multiclass else "multilabel"
        self.num_outputs = max(self.classes.values()) + 1 if multiclass else 1
        self.class_names = tuple(str(i) for i in range(self.num_outputs)) if multiclass else ("foreground",)
        # Decided over the whole folder, not this split, so every split feeds the model alike.
        self.in_channels = folder_channels([image for image, _ in pairs])
        if fit not in FITS:
            raise invalid_choice("data.fit", fit, FITS)
        super().__init__(size=tuple(size), augment=augment and split == "train", pad_label=0, resize=fit == "resize")

    distance_unit = "pixels, slices through-plane (image files carry no voxel size)"

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int):
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path, self.in_channels)
        opened = Image.open(mask_path)
        # A palette mask's 255 is VOC's "void" border: ignored with binary targets, never foreground.
        void = opened.mode == "P" and not self.classes
        mask = np.asarray(opened)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if image.shape[:2] != mask.shape:
            raise SegbenchError(f"{image_path} is {image.shape[:2]} but its mask {mask_path.name} is {mask.shape}")
        return image, mask, void

    def finish(self, image, mask, extra):
        image = image.astype(np.float32)
        image = (image - image.mean()) / (image.std() + 1e-6)  # per-image z-score: file formats differ in range
        ignored = np.isin(mask, list(self.ignored)) if self.ignored else None
        if self.target_kind == "multilabel":
            fg = np.isin(mask, [k for k, v in self.classes.items() if v > 0]) if self.classes else mask > 0
            target = fg[None].astype(np.float32)
            if extra:  # the mask was a palette image: its 255 is void
                target[0][mask == IGNORE_INDEX] = IGNORE_INDEX
            if ignored is not None:
                target[0][ignored] = IGNORE_INDEX
            return image, target
        target = np.full(mask.shape, 255, np.int64)  # padding stays 255: ignored by the loss and metrics
        for value, cls in self.classes.items():
            target[mask == value] = cls
        if ignored is not None:
            target[ignored] = IGNORE_INDEX
        return image, target
