"""Everything a run needs before its first write, built and checked: nothing here writes a file.

``segbench train`` calls ``prepare`` for every job of a sweep before Hydra makes a folder, so a
bad number, a bad data file, a model that does not fit the input or a checkpoint that does not
fit the model is one line and leaves nothing behind. ``train`` calls it again (the data is cached
per process) and only then writes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segbench.data import Splits, build_datasets
from segbench.errors import SegbenchError
from segbench.eval.metrics import MAIN_METRIC
from segbench.models import build_model
from segbench.schema import check_config, flatten
from segbench.train.checkpoint import REQUIRED_KEYS, changed_settings, load_checkpoint, load_model_state, resume_path
from segbench.train.distributed import resolve_device
from segbench.train.losses import build_loss
from segbench.train.memory import check_fits
from segbench.train.optim import build_optimizer, build_scheduler, training_steps
from segbench.train.precision import Precision, precision_for
from segbench.train.trackers import check_trackers


class RunFinished(Exception):
    """The run asked to resume has trained all its steps and written its metrics: nothing to do."""

    def __init__(self, run_dir: Path, step: int, total: int):
        super().__init__(
            f"{run_dir} is finished (step {step} of {total}) and its metrics.json is written; "
            "nothing to do (raise trainer.max_steps to train it further)"
        )
        self.run_dir = run_dir


@dataclass
class Prepared:
    """A run ready to train: data, model, loss, optimizer, schedule and, when resuming, where it stopped."""

    splits: Splits
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    freeze_step: int
    start: int = 0
    best: dict = field(default_factory=dict)
    last_val: dict = field(default_factory=dict)
    val_history: list = field(default_factory=list)
    resumed_from: Path | None = None
    precision: Precision = field(default_factory=Precision)
    channels_last: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_from_config(cfg: DictConfig, in_channels: int, num_outputs: int, modalities=None, init: bool = True):
    """Build ``cfg.model`` with the norm slot filled from ``cfg.norm`` (``init``: apply ``model.init_from``)."""
    model_opts = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("name", "init_from")}
    norm_opts = {k: v for k, v in OmegaConf.to_container(cfg.norm).items() if k not in ("name", "cond_channels")}
    cond = cfg.norm.get("cond_channels")
    if cond is not None:
        cond = [modalities.index(c) if isinstance(c, str) and modalities and c in modalities else c for c in cond]
        bad = [c for c in cond if not isinstance(c, int) or not 0 <= c < in_channels]
        if bad:
            raise SegbenchError(
                f"norm.cond_channels names {bad[0]!r}; use channel indices 0-{in_channels - 1} "
                f"or one of: {', '.join(modalities or [])}"
            )
    model = build_model(
        cfg.model.name,
        in_channels,
        num_outputs,
        norm=cfg.norm.name,
        norm_options=norm_opts,
        cond_channels=cond,
        **model_opts,
    )
    if init and cfg.model.get("init_from"):
        init_from_checkpoint(model, str(cfg.model.init_from))
    return model


def init_from_checkpoint(model, path: str) -> int:
    """Copy every weight of a finished run (or checkpoint) whose name and shape match: FCN's staged
    recipe starts FCN-16s from FCN-32s and FCN-8s from FCN-16s. Returns how many tensors were copied."""
    source = Path(path)
    if source.is_dir():
        source = source / "checkpoints" / "best.pt"
    if not source.is_file():
        raise SegbenchError(
            f"model.init_from={path!r}: no checkpoint there (give a run directory holding "
            "checkpoints/best.pt, or a .pt file)"
        )
    state = load_checkpoint(source)["model"]
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise SegbenchError(f"model.init_from={path!r}: none of its weights fits this model")
    model.load_state_dict(matched, strict=False)
    return len(matched)


def loss_from_config(cfg: DictConfig, target_kind: str, num_outputs: int | None = None):
    """Build ``cfg.loss`` for the dataset's kind of targets (and, when given, its number of classes)."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k != "name"}
    weights = options.get("class_weights")
    if weights is not None and num_outputs is not None and len(weights) != num_outputs:
        raise SegbenchError(
            f"loss.class_weights has {len(weights)} weight(s) but the data has {num_outputs} "
            "classes; give one weight per class"
        )
    return build_loss(cfg.loss.name, target_kind, **options)


def dry_run(prepared: Prepared, cfg: DictConfig) -> None:
    """One training step and one validation batch on the real data, on this throw-away ``prepared``:
    whatever would fail at step 1 or at the first validation (a loss that does not fit the targets,
    whole images of different sizes in one validation batch, ...) fails here, before a file exists."""
    import warnings

    from torch.utils.data import default_collate

    from segbench.eval.evaluate import base_dataset
    from segbench.eval.inference import predict
    from segbench.train.step import train_step

    splits = prepared.splits
    try:
        with warnings.catch_warnings():  # e.g. syncbatch outside a process group: fine for this check
            warnings.simplefilter("ignore")
            batch = default_collate([splits.train[(i, 0)] for i in range(int(cfg.data.batch_size))])
            prepared.model.train()
            train_step(prepared.model, *batch, prepared.loss_fn, prepared.optimizer, prepared.precision)
            size = min(int(cfg.data.get("val_batch_size", cfg.data.batch_size)), len(splits.val))
            images, target = default_collate([splits.val[i] for i in range(size)])
            prepared.model.eval()
            with torch.no_grad():
                prepared.loss_fn(predict(prepared.model, images, base_dataset(splits.val)), target)
    except SegbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - anything a first step can raise becomes one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SegbenchError(f"a first training step with this config fails: {type(err).__name__}: {reason}") from None


def prepare(cfg: DictConfig, run_dir: Path, world_size: int = 1, device=torch.device("cpu")) -> Prepared:
    """Build and check the run; raise ``SegbenchError`` (one line) or ``RunFinished``, never write."""
    check_config(cfg)
    check_trackers(cfg)
    precision = precision_for(cfg.trainer.get("precision", "32"), torch.device(device))
    target_device = resolve_device(cfg.trainer.device)  # where the run will train (preflight checks on the CPU)
    resume_from = resume_path(cfg.trainer.resume, Path(run_dir))
    state = _checkpoint_to_resume(cfg, resume_from) if resume_from is not None else None
    seed_everything(int(cfg.seed))
    splits = build_datasets(OmegaConf.to_container(cfg.data, resolve=True), int(cfg.trainer.train_eval_samples))
    train_set = splits.train
    modalities = list(getattr(train_set, "modalities", []) or [])
    # Refused before a weight is allocated: a model too large for the machine ends in the kernel's kill.
    check_fits(
        lambda: model_from_config(cfg, train_set.in_channels, train_set.num_outputs, modalities, init=False),
        train_set[(0, 0)][0],
        int(cfg.data.batch_size),
        str(cfg.optim.get("name", "adam")),
        target_device,
    )
    # A resumed run's weights come from its checkpoint; its init_from run may be gone by now.
    model = model_from_config(
        cfg, train_set.in_channels, train_set.num_outputs, modalities, init=resume_from is None
    ).to(device)
    channels_last = bool(cfg.trainer.get("channels_last", False))
    if channels_last and precision.nhwc_backward_crashes and target_device.type == "cpu":
        # Refused rather than crashing a sweep.
        raise SegbenchError(
            "trainer.channels_last=true needs trainer.precision=bf16-mixed on the CPU (the fp32 "
            "channels-last backward crashes in this torch build); or set trainer.channels_last=false"
        )
    # A GPU run's preflight dry run on the CPU stays NCHW in float32, for the same crash.
    channels_last = channels_last and not precision.nhwc_backward_crashes
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model_dims, data_dims = getattr(model, "dims", 2), getattr(train_set, "spatial_dims", 2)
    if model_dims != data_dims:
        fit = "model=resunet3d" if data_dims == 3 else "a 2-D model (resunet, fcn8s, ...)"
        raise SegbenchError(
            f"model={cfg.model.name} is {model_dims}-D but data={cfg.data.name} gives "
            f"{data_dims}-D inputs; use {fit} with data={cfg.data.name}"
        )
    if hasattr(model, "check_input_size") and train_set.size:
        model.check_input_size(*train_set.size)
    loss_fn = loss_from_config(cfg, train_set.target_kind, train_set.num_outputs).to(device)
    if cfg.data.get("val_whole_images") and int(cfg.data.get("val_batch_size", 1)) > 1:
        raise SegbenchError(
            f"data.val_batch_size={cfg.data.val_batch_size} with data.val_whole_images=true: whole "
            "images differ in size and cannot share a batch; use data.val_batch_size=1"
        )
    global_batch = int(cfg.data.batch_size) * world_size
    if len(train_set) < global_batch:
        raise SegbenchError(
            f"data.batch_size={cfg.data.batch_size} x {world_size} rank(s) is more than the "
            f"{len(train_set)} training samples; lower data.batch_size"
        )
    total_steps = training_steps(OmegaConf.to_container(cfg.trainer), len(train_set), global_batch)
    optimizer = build_optimizer(model.parameters(), OmegaConf.to_container(cfg.optim), global_batch)
    scheduler = build_scheduler(optimizer, OmegaConf.to_container(cfg.optim), total_steps)
    freeze_at = cfg.trainer.get("freeze_bn_after")
    freeze_step = total_steps if freeze_at is None else int(total_steps * float(freeze_at))
    prepared = Prepared(
        splits,
        model,
        loss_fn,
        optimizer,
        scheduler,
        total_steps,
        freeze_step,
        precision=precision,
        channels_last=channels_last,
    )
    if state is not None:
        _resume(prepared, state, resume_from, Path(run_dir), cfg.trainer.get("stop_at"))
    return prepared


def _checkpoint_to_resume(cfg: DictConfig, path: Path) -> dict:
    """The checkpoint, refused when this run's settings differ from those it was trained with."""
    state = load_checkpoint(path, REQUIRED_KEYS)
    try:
        now = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001 - an interpolation that cannot resolve (a missing env variable)
        raise SegbenchError(f"the config cannot be resolved: {str(err).splitlines()[0]}") from None
    changed = changed_settings(state["config"], now)
    if changed:
        saved = flatten(state["config"])
        shown = ", ".join(f"{k} ({saved.get(k, 'unset')!r} -> {flatten(now).get(k, 'unset')!r})" for k in changed[:4])
        raise SegbenchError(
            f"cannot resume {path} with other settings than it was trained with: {shown}"
            f"{f' and {len(changed) - 4} more' if len(changed) > 4 else ''}; a resume may "
            "change only trainer.* (e.g. trainer.max_steps), data.num_workers and data.val_batch_size"
        )
    return state


def _resume(prepared: Prepared, state: dict, path: Path, run_dir: Path, stop_at: float | None = None) -> None:
    step = int(state["step"])
    main = MAIN_METRIC[prepared.splits.train.target_kind]
    stopped = stop_at is not None and state.get("last_val", {}).get(main, -1.0) >= float(stop_at)
    if (run_dir / "metrics.json").is_file() and not stopped:
        # A run that trainer.until_plateau stopped at its plateau is finished too.
        ended = json.loads((run_dir / "metrics.json").read_text())
        stopped = (
            ended.get("steps") == step
            and (ended.get("convergence") or {}).get("converged") is True
            and bool(state.get("config", {}).get("trainer", {}).get("until_plateau"))
        )
    if (step >= prepared.total_steps or stopped) and (run_dir / "metrics.json").is_file():
        raise RunFinished(run_dir, step, prepared.total_steps)
    load_model_state(prepared.model, state, path)
    try:
        prepared.optimizer.load_state_dict(state["optimizer"])
        prepared.scheduler.load_state_dict(state["scheduler"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if prepared.precision.scaler is not None and "scaler" in state:
            prepared.precision.scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise SegbenchError(f"{path}: its optimizer or schedule state does not fit this run ({err})") from None
    prepared.start, prepared.best = step, dict(state["best"])
    prepared.last_val, prepared.resumed_from = dict(state.get("last_val", {})), path
    # A checkpoint written before the history was saved resumes with the validations after it only.
    prepared.val_history = list(state.get("val_history", []))
