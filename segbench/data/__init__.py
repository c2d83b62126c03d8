"""Dataset registry: ``data.name`` picks the reader; every reader gives train and val splits."""

from __future__ import annotations

from segbench.errors import SegbenchError, invalid_choice

LOADER_KEYS = ("name", "batch_size", "val_batch_size", "num_workers", "split_seed")


def _brats(split: str, seed: int, **opts):
    from segbench.data.brats import BratsSlices

    return BratsSlices(split=split, seed=seed, **opts)


def _voc(split: str, seed: int, **opts):
    from segbench.data.voc import VOCSegmentationData

    return VOCSegmentationData(split=split, **opts)


def _folder(split: str, seed: int, **opts):
    from segbench.data.folder import ImageMaskFolder

    return ImageMaskFolder(split=split, seed=seed, **opts)


DATASETS = {"brats": _brats, "voc": _voc, "folder": _folder}


def build_datasets(data_cfg: dict):
    """(train, val) datasets for a ``data`` config group; loader keys are ignored here."""
    name = data_cfg.get("name")
    if name not in DATASETS:
        raise invalid_choice("data.name", name, DATASETS)
    opts = {k: v for k, v in data_cfg.items() if k not in LOADER_KEYS}
    seed = int(data_cfg.get("split_seed", 0))
    try:
        return DATASETS[name]("train", seed, **opts), DATASETS[name]("val", seed, **opts)
    except TypeError as err:  # an option this reader does not take
        raise SegbenchError(f"data={name}: {err}") from None
