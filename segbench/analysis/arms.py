"""What an arm is: the overrides that differ between runs (seeds excluded), and a run's result.

Shared by ``compare``, its figures and the study drivers, so that all of them group runs alike.
"""

from __future__ import annotations

from segbench.analysis.runs import Run

# Keys that never define an arm: the replicate, and settings that do not change what is learned.
IGNORED_KEYS = {
    "seed",
    "data.fold",
    "trainer.device",
    "trainer.progress",
    "trainer.threads",
    "hydra.launcher.n_jobs",
    "data.num_workers",
    "trainer.log_images",
    "hydra.sweep.dir",
    "hydra.run.dir",
}
BATCH_KEYS = ("data.batch_size", "bs")


def colour_group(key: tuple) -> tuple:
    """An arm without its batch size: one colour per norm (or cause), one line style per batch."""
    return tuple((k, v) for k, v in key if k not in BATCH_KEYS) or key


def _config_value(run: Run, dotted: str) -> str:
    node = run.config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):  # a config group (data=..., model=...): its name, not the whole group
        return str(node.get("name", "-"))
    return str(node) if node is not None else "-"


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs (seeds excluded: they are replicates)."""
    keys = sorted({k for r in runs for k in r.overrides} - IGNORED_KEYS)
    varying = [k for k in keys if len({r.overrides.get(k, _config_value(r, k)) for r in runs}) > 1]
    return varying or ["norm"]


def arm_key(run: Run, varying: list[str]) -> tuple:
    return tuple((k, run.overrides.get(k, _config_value(run, k))) for k in varying)


def label(key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in key)


def sort_key(key: tuple):
    """Numbers as numbers (batch 2 before 16), so tables read in order."""
    out = []
    for _, v in key:
        try:
            out.append((0, float(v), ""))
        except ValueError:
            out.append((1, 0.0, v))
    return out


def result(run: Run, metric: str, checkpoint: str = "best") -> float | None:
    """The run's test-split ``metric`` for its ``best``-by-val (or ``last``) checkpoint."""
    value = run.metrics.get("test", {}).get(checkpoint, {}).get(metric)
    return None if value is None else float(value)
