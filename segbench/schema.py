"""Types and ranges of every number in a composed config, checked before a run makes its folder.

One table, one rule per key, so what is valid is readable in one place and every message has
the same shape: ``data.batch_size=0 must be an integer at least 1``. Keys a group does not have
(``norm.eps`` under ``norm=none``) are skipped; keys not named here are left to the code that
reads them (choices are checked by each registry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError, invalid_choice


@dataclass(frozen=True)
class Number:
    """A number within [lo, hi] (bounds optional, ``lo_open``/``hi_open`` exclude them)."""

    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False

    def problem(self, value) -> str | None:
        if value is None:
            return None if self.nullable else "must be set"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self._describe()}"
        if self.integer and not (isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())):
            return f"must be {self._describe()}"
        if not math.isfinite(value):
            return f"must be {self._describe()} (not {value})"
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self._describe()}" if too_low or too_high else None

    def _describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'above' if self.lo_open else 'at least'} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'below' if self.hi_open else 'at most'} {self.hi:g}")
        text = kind + (" " + " and ".join(parts) if parts else "")
        return text + (" (or null)" if self.nullable else "")


@dataclass(frozen=True)
class Flag:
    """A boolean: ``true`` or ``false``, never text or a number."""

    def problem(self, value) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"


FLAG = Flag()
COUNT = Number(integer=True, lo=1)
OPTIONAL_COUNT = Number(integer=True, lo=1, nullable=True)
NON_NEGATIVE_INT = Number(integer=True, lo=0)
POSITIVE = Number(lo=0, lo_open=True)
FRACTION = Number(lo=0, hi=1)
MOMENTUM = Number(lo=0, hi=1, nullable=True)

RULES: dict[str, Number | Flag] = {
    "seed": Number(integer=True, lo=0),
    "data.batch_size": COUNT,
    "data.val_batch_size": COUNT,
    "data.num_workers": NON_NEGATIVE_INT,
    "data.split_seed": Number(integer=True, lo=0),
    "data.folds": Number(integer=True, lo=2, nullable=True),
    "data.fold": NON_NEGATIVE_INT,
    "data.val_fraction": Number(lo=0, hi=1, hi_open=True),
    "data.test_fraction": Number(lo=0, hi=1, hi_open=True),
    "data.tumor_fraction": Number(lo=0, hi=1, nullable=True),
    "data.min_brain_fraction": FRACTION,
    "data.foreground_fraction": FRACTION,
    "data.overlap": Number(lo=0, hi=1, hi_open=True),
    "data.patches_per_subject": COUNT,
    "data.window_batch": COUNT,
    "optim.lr": POSITIVE,
    "optim.weight_decay": Number(lo=0),
    "optim.momentum": Number(lo=0, hi=1, hi_open=True),
    "optim.warmup_steps": NON_NEGATIVE_INT,
    "optim.poly_power": POSITIVE,
    "optim.reference_batch_size": COUNT,
    "trainer.max_steps": OPTIONAL_COUNT,
    "trainer.max_epochs": OPTIONAL_COUNT,
    "trainer.max_images": OPTIONAL_COUNT,
    "trainer.val_every": COUNT,
    "trainer.validations": OPTIONAL_COUNT,
    "trainer.stop_at": Number(lo=0, hi=1, nullable=True),
    "trainer.checkpoint_every": COUNT,
    "trainer.until_plateau": FLAG,
    "study.margin": POSITIVE,
    "norm.update_stats": FLAG,
    "model.inner_act": FLAG,
    "trainer.plateau_epsilon": POSITIVE,
    "trainer.channels_last": FLAG,
    "trainer.compile": FLAG,
    "data.site_batches": FLAG,
    "data.cache": FLAG,
    "trainer.threads": OPTIONAL_COUNT,
    "trainer.log_images": NON_NEGATIVE_INT,
    "trainer.precise_bn_batches": Number(integer=True, lo=0, nullable=True),
    "trainer.freeze_bn_after": Number(lo=0, hi=1, nullable=True),
    "trainer.train_eval_samples": COUNT,
    "model.width": POSITIVE,
    "model.depth": COUNT,
    "model.dropout": Number(lo=0, hi=1, hi_open=True),
    "norm.eps": POSITIVE,
    "norm.momentum": MOMENTUM,
    "norm.num_groups": Number(integer=True, lo=1, nullable=True),
    "norm.group_size": Number(integer=True, lo=1, nullable=True),
    "norm.style_dim": COUNT,
    "norm.hidden": COUNT,
    "norm.kernel": Number(integer=True, lo=1),
    "norm.r_max": Number(lo=1),
    "norm.d_max": Number(lo=0),
    "norm.hold_steps": NON_NEGATIVE_INT,
    "norm.r_relax_steps": NON_NEGATIVE_INT,
    "norm.d_relax_steps": NON_NEGATIVE_INT,
    "norm.window": COUNT,
    "norm.burnin": NON_NEGATIVE_INT,
    "loss.pos_weight": Number(lo=0, lo_open=True, nullable=True),
    "loss.dice_weight": Number(lo=0),
}
# Words from a fixed set (choices of a registry are checked by the registry itself).
CHOICE_RULES: dict[str, tuple[str, ...]] = {
    "study.scope": ("subjects", "population"),
    "trainer.hd95": ("monai", "brats"),
}
# Lists of numbers: every element follows the rule, and the list has the given length (None: any).
LIST_RULES: dict[str, tuple[Number, int | None]] = {
    "data.size": (COUNT, 2),
    "data.patch": (COUNT, 3),
    "optim.betas": (Number(lo=0, hi=1, hi_open=True), 2),
    "loss.class_weights": (Number(lo=0), None),
}


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line ``SegbenchError`` for the first number out of its type or range."""
    for key, rule in RULES.items():
        if not _has(cfg, key):
            continue
        value = _value(cfg, key)
        problem = rule.problem(value)
        if problem:
            raise SegbenchError(f"{key}={value!r} {problem}")
    for key, choices in CHOICE_RULES.items():
        if _has(cfg, key) and _value(cfg, key) not in choices:
            raise invalid_choice(key, _value(cfg, key), choices)
    for key, (rule, length) in LIST_RULES.items():
        if not _has(cfg, key):
            continue
        values = _value(cfg, key)
        if values is None and key == "loss.class_weights":
            continue
        if not isinstance(values, (list, tuple)) or (length is not None and len(values) != length):
            shape = f"a list of {length} numbers" if length else "a list of numbers"
            raise SegbenchError(f"{key}={values!r} must be {shape}, e.g. [{', '.join(['1'] * (length or 2))}]")
        for item in values:
            problem = rule.problem(item)
            if problem:
                raise SegbenchError(f"{key}={values!r}: every element {problem}")
    budgets = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_images")
    if all(_has(cfg, k) and _value(cfg, k) is None for k in budgets):
        raise SegbenchError(f"no training budget: set one of {', '.join(budgets)}")


def _has(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def _value(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # noqa: BLE001 - an unresolvable interpolation, a missing env variable
        raise SegbenchError(f"{key} cannot be read: {str(err).splitlines()[0]}") from None
    return (
        OmegaConf.to_container(value, resolve=True)
        if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value)
        else value
    )


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a config as dotted keys and their leaf values."""
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def lr_grid(cfg) -> list[float]:
    """The grid from ``study.lr_grid`` (empty: no grid), checked before anything is written."""
    grid = OmegaConf.select(cfg, "study.lr_grid")
    if grid is None:
        return []
    if isinstance(grid, (int, float)):
        grid = [grid]
    values = []
    for value in grid:
        try:
            lr = float(value)
        except (TypeError, ValueError):
            raise SegbenchError(f"study.lr_grid holds {value!r}; give positive numbers, e.g. [1e-3,3e-3]") from None
        if not (math.isfinite(lr) and lr > 0):
            raise SegbenchError(f"study.lr_grid holds {value!r}; every learning rate must be a positive number")
        values.append(lr)
    return sorted(set(values))
