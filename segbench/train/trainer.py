"""The training loop: ``train(cfg, run_dir) -> metrics``, kept apart from Hydra so tests call it directly."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench.data.common import StepBatchSampler
from segbench.data.site_batches import SiteBatchSampler, check_site_batches
from segbench.eval.metrics import MAIN_METRIC, REPORT_METRIC
from segbench.io import write_json
from segbench.nn.bn_stats import train_mode
from segbench.nn.slot import norm_scalars
from segbench.ranks import DistContext
from segbench.train import distributed
from segbench.train.checkpoint import load_checkpoint, save_checkpoint
from segbench.train.convergence import plateau, plateau_reached
from segbench.train.preemption import Preempted, StopRequest
from segbench.train.prepare import Prepared, RunFinished, prepare
from segbench.train.run_log import log_end, log_start, progress_bar, write_split
from segbench.train.run_metrics import RunMetrics, budget, mean_over_layers
from segbench.train.rundir import remove_orphans, run_lock
from segbench.train.step import compile_for_training, train_step
from segbench.train.trackers import RunInfo, Trackers
from segbench.train.validation import Stopwatch, summary_line, test_split, validate

log = logging.getLogger(__name__)
PREPARING = threading.Lock()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    after_step: Callable[[int], None] | None = None,
    step_fn: Callable[..., torch.Tensor] | None = None,
) -> dict:
    """Train ``cfg`` and write TensorBoard events, checkpoints and metrics.json under ``run_dir``.

    Choices (best checkpoint, sigmoid threshold) are made on val; the test split is evaluated
    once, at the end, for the last and the best-by-val checkpoint, and is what results report.
    ``after_step(step)`` runs after each step, outside the time images/s is measured over:
    ``segbench bench`` interleaves a bare loop's steps there, so both see the same machine.
    ``step_fn`` takes ``train_step``'s place: packed seeds (``segbench.train.packed``) pass theirs.
    """
    started = time.perf_counter()  # time to accuracy counts from here: data, model, everything
    timing = Stopwatch()
    run_dir = Path(run_dir)
    ctx = distributed.setup(cfg.trainer.device)
    run_dir = distributed.shared_run_dir(run_dir, ctx)
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size all run long: let cuDNN pick its fastest kernels
    try:
        # PREPARING: seeding and building a model use the process-wide RNG; packed seeds prepare
        # in threads of one process, so each member seeds and builds its model alone.
        with (
            distributed.main_rank_first(ctx),
            PREPARING,
            timing("prepare"),
        ):  # one rank builds a missing data cache, the others open it
            prepared = prepare(cfg, run_dir, ctx.world_size, ctx.device)
    except RunFinished as finished:
        log.info("%s", finished)
        return json.loads((run_dir / "metrics.json").read_text())
    with run_lock(run_dir) if ctx.is_main else contextlib.nullcontext(), StopRequest() as stop:
        if ctx.is_main:
            remove_orphans(run_dir)
        if ctx.is_main:
            log_start(cfg, run_dir, ctx, prepared)
        try:
            metrics = _train(cfg, run_dir, ctx, prepared, started, after_step, step_fn, timing, stop)
        except Preempted as stopped:
            if ctx.is_main:
                log.warning("%s", stopped)
            stop.hand_on(stopped)  # submitit's requeue when it is there; else Preempted goes up
        if ctx.is_main:
            log_end(metrics, run_dir)
        return metrics


@dataclass
class RunContext:
    """One run from its first step to its metrics.json: what it was given, and what it has so far."""

    cfg: DictConfig
    run_dir: Path
    ctx: DistContext
    prepared: Prepared
    started: float  # when train() was called: time to accuracy counts from here
    timing: Stopwatch
    stop: StopRequest
    net: torch.nn.Module  # what steps run (DDP-wrapped or compiled); evaluation uses prepared.model
    trackers: Trackers | None  # the main rank's; None on the others
    step_fn: Callable[..., torch.Tensor]
    after_step: Callable[[int], None] | None = None
    done: int = 0  # steps finished
    best: dict = field(default_factory=dict)  # the best validation so far, with its step
    last_val: dict = field(default_factory=dict)
    # Each validation's main metric with the wall seconds since train() was called (for a resumed run,
    # those of the process that ran it): what `segbench bench` reads time to accuracy from, and what
    # the convergence check judges. A resumed run continues the history its checkpoint kept.
    history: list = field(default_factory=list)
    eval_seconds: float = 0.0
    train_time: float = 0.0  # steady-state seconds of steps (the first step excluded)
    images_seen: int = 0  # images of those steps, over all ranks

    @property
    def batch(self) -> int:
        return int(self.cfg.data.batch_size)

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.prepared.splits.train.target_kind]

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def val_every(self) -> int:
        validations, total = self.cfg.trainer.get("validations"), self.prepared.total_steps
        return max(1, total // int(validations)) if validations else int(self.cfg.trainer.val_every)


def _train(cfg, run_dir, ctx, prepared: Prepared, started, after_step, step_fn, timing, stop) -> dict:
    net = distributed.wrap(prepared.model, ctx)
    if cfg.trainer.get("compile"):
        # Training steps only: evaluation and checkpoints use the plain module (same weights).
        net = compile_for_training(net, ctx.device, prepared.precision)
    trackers = None  # the run's trackers (TensorBoard and what logger= adds), on the main rank only
    if ctx.is_main:
        kind = prepared.splits.train.target_kind
        info = RunInfo(run_dir, cfg, prepared.start, ctx.world_size, MAIN_METRIC[kind], REPORT_METRIC[kind])
        trackers = Trackers(info)
        if not prepared.start:
            write_split(run_dir, prepared.splits)
    run = RunContext(
        cfg, run_dir, ctx, prepared, started, timing, stop, net, trackers,
        step_fn=step_fn or train_step,  # looked up at call time, so a test may replace train_step
        after_step=after_step, done=prepared.start, best=prepared.best, last_val=prepared.last_val,
        history=list(prepared.val_history),
    )  # fmt: skip
    try:
        return _loop(run)
    finally:
        if trackers:
            trackers.close()  # after finish(): nothing; after a stop or a failure: each tracker says so


def _loop(run: RunContext) -> dict:
    """Steps until the budget, a plateau, ``trainer.stop_at`` or a stop signal; then the test."""
    start, total = run.prepared.start, run.prepared.total_steps
    progress = progress_bar(run.cfg, run.ctx, start, total)
    tick = fetched = time.perf_counter()
    # Starting to iterate draws a seed from torch's global RNG, which also drives dropout. A fresh
    # run draws it at step 0, before anything is saved; a resumed run's RNG is already where the
    # checkpoint left it, so it must not draw again, or every dropout mask after a resume shifts.
    rng = torch.get_rng_state()
    batches = iter(_loader(run))
    if start:
        torch.set_rng_state(rng)
    for step, (images, target) in enumerate(batches, start=start):
        run.timing.add("data", time.perf_counter() - fetched)
        loss_value, stopping = train_one_step(run, step, images, target, tick)
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{run.images_seen / max(run.train_time, 1e-9):.1f}")
        reached = validate_if_due(run)
        if run.ctx.is_main and (run.done % int(run.cfg.trainer.checkpoint_every) == 0 or run.done == total or reached):
            checkpoint(run, "last.pt")
        if stopping:
            if run.ctx.is_main:
                checkpoint(run, "last.pt")
            progress.close()
            raise Preempted(run.stop.signum or signal.SIGTERM, run.done, run.ckpt_dir / "last.pt", run.run_dir)
        if run.after_step is not None:
            run.after_step(run.done)
        tick = fetched = time.perf_counter()
        if reached:  # every rank saw the same (all-reduced) validation, so all stop together
            _say_why_stopped(run)
            break
    progress.close()
    return finish(run)


def _loader(run: RunContext) -> DataLoader:
    """Training batches for steps start .. total - 1, a pure function of (seed, step)."""
    cfg, ctx, train_set = run.cfg, run.ctx, run.prepared.splits.train
    bounds = (int(cfg.seed), run.prepared.start, run.prepared.total_steps, ctx.rank, ctx.world_size)
    if cfg.data.get("site_batches"):  # per-site BN's training half: each batch from one site
        by_site = check_site_batches(train_set, run.batch * ctx.world_size)
        sampler = SiteBatchSampler(by_site, run.batch, *bounds)
    else:
        sampler = StepBatchSampler(len(train_set), run.batch, *bounds)
    return DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=int(cfg.data.num_workers),
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )


def train_one_step(run: RunContext, step: int, images, target, tick: float) -> tuple[float, bool]:
    """One optimizer step on every rank; returns the mean loss over ranks and whether any rank was
    asked to stop. ``tick``: when the previous step ended (throughput counts from there)."""
    ctx, prepared = run.ctx, run.prepared
    step_start = time.perf_counter()
    images, target = images.to(ctx.device, non_blocking=True), target.to(ctx.device, non_blocking=True)
    if prepared.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    train_mode(run.net, freeze_bn=step >= prepared.freeze_step)
    loss = run.step_fn(run.net, images, target, prepared.loss_fn, prepared.optimizer, prepared.precision)
    # One reduce per step carries the loss and whether any rank was asked to stop (a signal), so
    # every rank stops at the same step.
    asked = torch.tensor(float(run.stop.signum is not None), dtype=torch.float64)
    reduced = distributed.all_reduce_sum(torch.stack([loss.detach().cpu().double(), asked]), ctx)
    loss_value, stopping = float(reduced[0]) / ctx.world_size, bool(reduced[1] > 0)
    if not math.isfinite(loss_value):
        last = run.ckpt_dir / "last.pt"
        kept = (
            f"last good checkpoint: {last} (step {_saved_step(last)})"
            if last.is_file()
            else "no checkpoint was saved before it"
        )
        raise TrainingDiverged(
            f"loss became {loss_value} at step {step + 1}; stopped before updating the "
            f"weights; {kept}. Try a lower optim.lr"
        )
    lr = prepared.optimizer.param_groups[0]["lr"]
    prepared.scheduler.step()
    run.done = step + 1
    now = time.perf_counter()
    run.timing.add("steps", now - step_start)
    if step > prepared.start:  # the first step pays for allocation and warm-up; throughput is steady state
        run.train_time += now - tick
        run.images_seen += len(images) * ctx.world_size
    if run.trackers:
        run.trackers.scalar("train/loss", loss_value, run.done)
        run.trackers.scalar("train/lr", lr, run.done)  # under train/, not a lone flat chart on top
        run.trackers.scalar("train/images_seen", run.done * run.batch * ctx.world_size, run.done)
    return loss_value, stopping


def validate_if_due(run: RunContext) -> bool:
    """Validate when the schedule says so; keep best.pt; True when the run should stop here
    (``trainer.stop_at`` reached, or its plateau with ``trainer.until_plateau``)."""
    cfg, done, total, main = run.cfg, run.done, run.prepared.total_steps, run.main_metric
    if not (done % run.val_every == 0 or done == total):
        return False
    eval_start = time.perf_counter()
    splits, eval_batch = run.prepared.splits, int(cfg.data.get("val_batch_size", run.batch))
    run.last_val = validate(
        cfg, run.prepared.model, run.net, splits, run.prepared.loss_fn, run.ctx, run.trackers, done, eval_batch,
        run.timing,
    )  # fmt: skip
    run.eval_seconds += time.perf_counter() - eval_start
    improved = run.last_val[main] >= run.best.get(main, -math.inf)
    run.history.append(
        {
            "step": done,
            "seconds": round(time.perf_counter() - run.started, 3),
            "eval_seconds": round(run.eval_seconds, 3),
            main: run.last_val[main],
        }
    )
    stop_at = cfg.trainer.get("stop_at")
    reached = stop_at is not None and run.last_val[main] >= stop_at
    if cfg.trainer.get("until_plateau") and not reached:
        # Train each run until its own plateau, max_steps (or images, epochs) the cap.
        reached = plateau_reached(plateau(run.history, main, float(cfg.trainer.plateau_epsilon)))
    if run.ctx.is_main:
        # The run's folder name first: a sweep's parallel members share one console.
        mark = " (best)" if improved else ""
        log.info("%s step %d/%d val: %s%s", run.run_dir.name, done, total, summary_line(run.last_val), mark)
    if run.ctx.is_main and improved:
        run.best = {**run.last_val, "step": done}
        checkpoint(run, "best.pt")
    return reached


def checkpoint(run: RunContext, name: str) -> None:
    """Save the run as it stands to ``checkpoints/<name>`` (atomically)."""
    prepared = run.prepared
    with run.timing("checkpoints"):
        save_checkpoint(
            run.ckpt_dir / name,
            prepared.model,
            prepared.optimizer,
            prepared.scheduler,
            run.done,
            run.best,
            OmegaConf.to_container(run.cfg, resolve=True),
            run.last_val,
            prepared.precision.scaler,
            run.history,
        )


def _say_why_stopped(run: RunContext) -> None:
    if not run.ctx.is_main:
        return
    stop_at, value = run.cfg.trainer.get("stop_at"), run.last_val[run.main_metric]
    why = (
        f"reached trainer.stop_at={stop_at:g}"
        if stop_at is not None and value >= stop_at
        else "reached its plateau (trainer.until_plateau)"
    )
    log.info("val %s %.4g %s at step %d; stopping", run.main_metric, value, why, run.done)


def finish(run: RunContext) -> dict:
    """The test split for the last and the best checkpoint, then metrics.json."""
    cfg, ctx, prepared, steps = run.cfg, run.ctx, run.prepared, run.done
    splits, train_set = prepared.splits, prepared.splits.train
    run.best = distributed.broadcast_object(run.best, ctx)
    eval_batch = int(cfg.data.get("val_batch_size", run.batch))
    with run.timing("test"):
        test = test_split(
            cfg, prepared.model, run.net, splits, prepared.loss_fn, ctx, run.trackers, steps, eval_batch,
            run.last_val, run.best, run.ckpt_dir,
        )  # fmt: skip
    metrics = RunMetrics(
        val={"final": run.last_val, "best": run.best, "history": run.history},
        test=test,
        main_metric=run.main_metric,
        report_metric=REPORT_METRIC[train_set.target_kind],
        steps=steps,
        images_per_s=run.images_seen / run.train_time if run.train_time else None,
        global_batch_size=run.batch * ctx.world_size,
        world_size=ctx.world_size,
        precision=prepared.precision.name,
        norm=cfg.norm.name,
        model=cfg.model.name,
        batch_size=run.batch,
        seed=int(cfg.seed),
        hd95_convention=str(cfg.trainer.get("hd95", "monai")),
        hd95_unit=getattr(train_set, "distance_unit", "mm"),
        lr=float(cfg.optim.lr),
        lr_applied=float(prepared.optimizer.param_groups[0]["initial_lr"]),
        images_seen=steps * run.batch * ctx.world_size,
        budget=budget(cfg),
        convergence=plateau(run.history, run.main_metric, float(cfg.trainer.get("plateau_epsilon", 0.01))),
        train_samples=len(train_set),
        val_samples=len(splits.val),
        test_samples=len(splits.test) if splits.test is not None else 0,
        norm_state=mean_over_layers(norm_scalars(prepared.model)),
    )
    total = round(time.perf_counter() - run.started, 3)
    metrics.seconds = {**{k: round(v, 3) for k, v in run.timing.items()}, "total": total}
    out = metrics.to_json()
    if ctx.is_main:
        write_json(run.run_dir / "metrics.json", out)
        run.trackers.finish(out)  # after metrics.json: trackers may keep it (MLflow's artifacts)
        log.info("wrote %s", run.run_dir / "metrics.json")
    return out


def _saved_step(path: Path) -> int:
    return int(load_checkpoint(path).get("step", 0))
