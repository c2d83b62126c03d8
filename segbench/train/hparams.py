"""TensorBoard's HParams tab, written by every run: its settings at the start, its status at the end.

The metrics the tab shows are the run's own scalars (``val/<main metric>``, ``zz_test_best/*`` …),
which TensorBoard reads from the same folder, so a sweep compares there without any extra command.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

# Test results go under "<TEST_GROUP>_best/" and "<TEST_GROUP>_last/". TensorBoard's Time Series tab
# orders its sections by name, and a plain "test_*" would open the page on single-point charts of the
# final numbers, before train and val; these names sort after "val".
TEST_GROUP = "zz_test"
NORM_GROUP = "zz_norm"  # a mixture norm's learnt state per layer (switchable norm's shares), after val too

# Always shown: the group choices and the numbers every study varies.
CHOICES = ("model.name", "norm.name", "loss.name", "optim.name", "data.name")
NUMBERS = ("data.batch_size", "optim.lr", "seed", "model.width")


def hparams_of(cfg: DictConfig, world_size: int) -> dict:
    """Settings typed for TensorBoard: numbers as numbers, everything else as text."""
    keys = [*CHOICES, *NUMBERS, *filter(None, os.environ.get("SEGBENCH_SWEPT_KEYS", "").split(","))]
    out = {}
    for key in dict.fromkeys(keys):
        value = OmegaConf.select(cfg, key.lstrip("+~"))
        if isinstance(value, DictConfig) and "name" in value:  # a swept group (norm=...): its choice
            key, value = f"{key}.name", value.name
        if key == "data.batch_size" and value is not None:
            value = int(value) * world_size  # the global batch is what the study compares
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = (
                "null" if value is None else str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
            )
        out[key.replace(".name", "")] = value
    return out


# The HParams tab ticks the first five settings of the experiment, in name order, and hides the rest.
SHOWN = 5
FIRST = ("norm", "data.batch_size", "seed", "model", "optim.lr")  # after the swept keys, in this order


def shown_keys(settings: dict) -> list[str]:
    """The settings the HParams table lists: what the sweep varies first, then ``FIRST``, five in all
    (more when a sweep varies more); every setting stays in the session, for filtering and export."""
    swept = [k.lstrip("+~") for k in os.environ.get("SEGBENCH_SWEPT_KEYS", "").split(",") if k]
    named = [k if k in settings else k.removesuffix(".name") for k in swept]
    keys = list(dict.fromkeys(k for k in named if k in settings))
    for key in FIRST:
        if len(keys) >= SHOWN:
            break
        if key in settings and key not in keys:
            keys.append(key)
    return keys


def metric_tags(main_metric: str, report_metric: str) -> list[str]:
    """The test result first (the number a reader looks for), then val's, then the fit."""
    return [
        f"{TEST_GROUP}_best/{report_metric}",
        f"val/{main_metric}",
        f"{TEST_GROUP}_best/auroc",
        f"{TEST_GROUP}_last/{report_metric}",
        "train/loss_eval_mode",
        "train/loss",
    ]


def write_start(writer, cfg: DictConfig, world_size: int, main_metric: str, report_metric: str) -> None:
    from torch.utils.tensorboard.summary import hparams

    settings = hparams_of(cfg, world_size)
    metrics = {tag: 0.0 for tag in metric_tags(main_metric, report_metric)}
    experiment, _, _ = hparams({k: settings[k] for k in shown_keys(settings)}, metrics)
    _, session_start, _ = hparams(settings, metrics)
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session_start)


def write_end(writer) -> None:
    from torch.utils.tensorboard.summary import hparams

    _, _, session_end = hparams({}, {})
    writer.file_writer.add_summary(session_end)


def write_layout(writer, main_metric: str, report_metric: str) -> None:
    """A Custom Scalars page with the curves people look at first, train and val side by side.

    The Scalars tab orders sections alphabetically and cannot be told otherwise (TensorBoard's
    maintainers point to this page for a chosen order, tensorflow/tensorboard#865), so
    ``test_*`` would come before ``train``; here the order is ours.
    """
    writer.add_custom_scalars(
        {
            "1 train and val": {
                "loss (train, train images in eval mode, val)": [
                    "Multiline",
                    ["train/loss", "train/loss_eval_mode", "val/loss"],
                ],
                f"val {main_metric} and {report_metric}": ["Multiline", [f"val/{main_metric}", f"val/{report_metric}"]],
                "learning rate": ["Multiline", ["train/lr"]],
            },
            "2 test (last and best-by-val checkpoints)": {
                report_metric: [
                    "Multiline",
                    [f"{TEST_GROUP}_last/{report_metric}", f"{TEST_GROUP}_best/{report_metric}"],
                ],
            },
        }
    )
