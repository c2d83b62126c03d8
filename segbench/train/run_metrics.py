"""What a finished run writes to ``metrics.json``: one dataclass, its fields the file's keys.

``FORMAT`` says which segbench wrote a file, so readers decide by version, not by date:

- 1 (no ``format`` key): a resumed run's convergence check saw only the validations after its
  resume (its checkpoint did not keep the val history).
- 2: checkpoints keep the val history, so the stored check judges the whole curve; ``hd95_unit``
  says what HD95 is measured in; ``format`` written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig

FORMAT = 2


@dataclass
class RunMetrics:
    """A run's results and how they were obtained (``metrics.json``)."""

    val: dict  # final, best (with its step) and history of the val validations
    test: dict  # last and best checkpoint's test results, each at its val-chosen threshold
    main_metric: str  # what chose the best checkpoint on val (dice_tuned or miou)
    report_metric: str  # what results report on test (dice or miou)
    steps: int
    images_per_s: float | None
    global_batch_size: int
    world_size: int
    precision: str
    norm: str
    model: str
    batch_size: int
    seed: int
    hd95_convention: str
    hd95_unit: str
    lr: float
    lr_applied: float  # after optim.lr_scaling
    images_seen: int
    budget: str
    convergence: dict
    train_samples: int
    val_samples: int
    test_samples: int
    norm_state: dict
    # This process's wall seconds by phase (a resumed run: since its resume); "total" from train()
    # being called to metrics.json, the rest of it being logging and bookkeeping.
    seconds: dict = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> dict:
        return asdict(self)


def budget(cfg: DictConfig) -> str:
    """What the training budget was set in: images (equal for every batch size), epochs or steps."""
    trainer = cfg.trainer
    if trainer.get("max_images"):
        return f"{int(trainer.max_images)} images"
    if trainer.get("max_epochs"):
        return f"{int(trainer.max_epochs)} epochs"
    return f"{int(trainer.max_steps)} steps" + (" (cap; until plateau)" if trainer.get("until_plateau") else "")


def mean_over_layers(per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
    """The layers' reported norm state averaged, e.g. switchable norm's mean share of BN statistics."""
    keys = sorted({k for values in per_layer.values() for k in values})
    return {k: sum(v[k] for v in per_layer.values() if k in v) / sum(k in v for v in per_layer.values()) for k in keys}
