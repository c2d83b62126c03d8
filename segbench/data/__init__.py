"""Dataset registry: ``data.name`` picks the reader; every reader gives train, val and test splits.

Val is for choosing (the best checkpoint, the threshold, the learning rate); test is only for
reporting, and no choice is ever made on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

from segbench.errors import SegbenchError, invalid_choice

LOADER_KEYS = ("name", "batch_size", "val_batch_size", "num_workers", "split_seed", "site_batches")


def _brats(split: str, seed: int, **opts):
    from segbench.data.brats import BratsSlices

    return BratsSlices(split=split, seed=seed, **opts)


def _voc(split: str, seed: int, **opts):
    from segbench.data.voc import VOCSegmentationData

    return VOCSegmentationData(split=split, seed=seed, **opts)


def _folder(split: str, seed: int, **opts):
    from segbench.data.folder import ImageMaskFolder

    return ImageMaskFolder(split=split, seed=seed, **opts)


def _brats3d(split: str, seed: int, **opts):
    from segbench.data.brats3d import BratsVolumes

    return BratsVolumes(split=split, seed=seed, **opts)


def _lgg(split: str, seed: int, **opts):
    from segbench.data.lgg import LggSlices

    return LggSlices(split=split, seed=seed, **opts)


DATASETS = {"brats": _brats, "brats3d": _brats3d, "voc": _voc, "folder": _folder, "lgg": _lgg}


@dataclass
class Splits:
    """The datasets of one run.

    Attributes:
        train: augmented training samples.
        val: for every choice (best checkpoint, threshold, learning rate).
        test: for the reported results only; None when ``data.test_fraction`` is 0.
        train_eval: a fixed subset of training samples without augmentation, evaluated like val
            so that every arm's training loss is measured the same way (eval mode).
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    train_eval: Dataset


SPLIT_KINDS = ("by_subject", "by_site")


def check_split_kind(kind, opts: dict) -> None:
    """``data.split``: null (by site exactly when ``data.test_sites`` names sites), ``by_subject`` or ``by_site``."""
    if kind is None:
        return
    if kind not in SPLIT_KINDS:
        raise invalid_choice("data.split", kind, SPLIT_KINDS)
    sites = opts.get("test_sites")
    if kind == "by_site" and not sites:
        from segbench.data.brats import read_sites

        known = sorted(set(read_sites(str(opts.get("root", ""))).values())) if opts.get("root") else []
        raise SegbenchError(
            "data.split=by_site needs the held-out site(s) named: data.test_sites=[<site>]"
            + (f" (the data's sites: {', '.join(known)})" if known else " (sites.tsv names them)")
        )
    if kind == "by_subject" and sites:
        raise SegbenchError(
            f"data.split=by_subject and data.test_sites={list(sites)} ask for two different splits; drop one of them"
        )


def build_datasets(data_cfg: dict, train_eval_samples: int = 64) -> Splits:
    """The splits for a ``data`` config group; loader keys are ignored here."""
    name = data_cfg.get("name")
    if name not in DATASETS:
        raise invalid_choice("data.name", name, DATASETS)
    opts = {k: v for k, v in data_cfg.items() if k not in LOADER_KEYS}
    check_split_kind(opts.pop("split", None), opts)
    seed = int(data_cfg.get("split_seed", 0))
    try:
        train, val, test = (DATASETS[name](split, seed, **opts) for split in ("train", "val", "test"))
        plain = DATASETS[name]("train", seed, **{**opts, "augment": False})
    except TypeError as err:  # an option this reader does not take
        raise SegbenchError(f"data={name}: {err}") from None
    if len(val) == 0:
        raise SegbenchError(f"data={name}: the validation split is empty; raise data.val_fraction or add data")
    if data_cfg.get("site_batches"):  # refused here, before any file of the run is written
        from segbench.data.site_batches import check_site_batches

        check_site_batches(train, int(data_cfg.get("batch_size", 1)))
    pick = np.sort(np.random.default_rng(seed).choice(len(plain), min(train_eval_samples, len(plain)), replace=False))
    return Splits(train, val, test if len(test) else None, Subset(plain, pick.tolist()))
