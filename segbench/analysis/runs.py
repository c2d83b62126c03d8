"""Finding finished runs on disk and reading them back (config, overrides, TensorBoard scalars)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.errors import SegbenchError
from segbench.progress import progress


@dataclass
class Run:
    path: Path
    metrics: dict
    config: dict
    overrides: dict[str, str]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def scalar(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        return self.scalars.get(tag, (np.zeros(0), np.zeros(0)))


def _read_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else None


# Tags runs of older segbench versions wrote, and their names now (renamed so that TensorBoard's
# Time Series tab, which opens its first two sections only, opens on train and val).
RENAMED_TAGS = {"train_eval/loss": "train/loss_eval_mode"}
RENAMED_PREFIXES = {"test_best/": "zz_test_best/", "test_last/": "zz_test_last/", "norm/": "zz_norm/"}


def current_tag(tag: str) -> str:
    for old, new in RENAMED_PREFIXES.items():
        if tag.startswith(old):
            return new + tag[len(old) :]
    return RENAMED_TAGS.get(tag, tag)


def scalar_events(tb_dir: Path):
    """TensorBoard's own reader over ``tb_dir``, loaded: every scalar event as written (raw tags)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    # A resumed run's writer marks where it continued (purge_step), and the reader drops what the
    # stopped process logged after that step, warning of "a TensorFlow restart" each time: that
    # is a resume working as meant, not something a user of compare should be told about.
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
    return acc


def read_scalars(tb_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series in a TensorBoard folder, read with TensorBoard's own reader (older runs'
    tags under their current names)."""
    acc = scalar_events(tb_dir)
    out = {}
    for tag in acc.Tags().get("scalars", []):
        # A resumed run writes a second events file; the reader takes files in name order, which
        # need not be the order they were written in (two files of one second and one process
        # differ only in a counter, and ".10" sorts before ".9"). Per step, the latest write wins.
        latest = {}
        for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
            latest[e.step] = e.value
        steps = sorted(latest)
        out[current_tag(tag)] = (np.array(steps), np.array([latest[s] for s in steps]))
    return out


def load_run(path: Path) -> Run:
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        config = _read_yaml(path / ".hydra" / "config.yaml") or {}
        saved_overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    except (ValueError, OSError) as err:  # JSON and YAML parse errors are ValueErrors
        raise SegbenchError(
            f"{path}: cannot read its metrics.json or .hydra files "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if not isinstance(metrics, dict) or not isinstance(saved_overrides, list):
        raise SegbenchError(f"{path}: its metrics.json or .hydra/overrides.yaml is not what segbench writes")
    overrides = {}
    for item in saved_overrides:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+")] = value
    # An lr-grid run keeps its curves in the chosen lr's folder.
    tb = path / str(metrics["selected"]) / "tb" if metrics.get("selected") else path / "tb"
    if not tb.is_dir():
        raise SegbenchError(
            f"{path} has no TensorBoard folder {tb.relative_to(path)}/ for its curves; "
            "compare finished runs as segbench wrote them"
        )
    return Run(path, metrics, config, overrides, read_scalars(tb))


def find_runs(paths: list[str]) -> list[Run]:
    """Runs named directly, or every finished run (holding metrics.json) below a sweep folder."""
    found: list[Path] = []
    for item in paths:
        base = Path(item)
        if not base.exists():
            raise SegbenchError(f"{item!r} does not exist; pass run directories or sweep folders")
        found += (
            sorted({p.parent for p in base.rglob("metrics.json")}) if not (base / "metrics.json").exists() else [base]
        )
    if not found:
        raise SegbenchError(f"no finished runs (folders with metrics.json) under: {' '.join(paths)}")
    unique = list(dict.fromkeys(found))
    runs = [load_run(p) for p in progress(unique, "reading runs", len(unique), "run")]
    runs = [r for r in runs if not r.metrics.get("grid_member")]  # lr-grid members count through their run
    if not runs:
        raise SegbenchError(f"no finished runs (folders with metrics.json) under: {' '.join(paths)}")
    if any("test" not in r.metrics for r in runs):
        old = next(r for r in runs if "test" not in r.metrics)
        raise SegbenchError(
            f"{old.path} was trained by an older segbench (no val/test results in metrics.json); "
            "train it again to compare"
        )
    return runs
