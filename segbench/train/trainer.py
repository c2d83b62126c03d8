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
from segbench.train import distributed
from segbench.train.checkpoint import load_checkpoint, save_checkpoint
from segbench.train.convergence import plateau, plateau_reached
from segbench.train.precision import emulated_bf16
from segbench.train.preemption import Preempted, StopRequest
from segbench.train.prepare import Prepared, RunFinished, prepare
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
            _log_start(cfg, run_dir, ctx, prepared)
        try:
            metrics = _train(cfg, run_dir, ctx, prepared, started, after_step, step_fn, timing, stop)
        except Preempted as stopped:
            if ctx.is_main:
                log.warning("%s", stopped)
            stop.hand_on(stopped)  # submitit's requeue when it is there; else Preempted goes up
        if ctx.is_main:
            _log_end(metrics, run_dir)
        return metrics


def _log_start(cfg: DictConfig, run_dir: Path, ctx, prepared: Prepared) -> None:
    splits = prepared.splits
    weights = sum(p.numel() for p in prepared.model.parameters())
    if getattr(splits.train, "summary", None):  # what the reader found (patients, slices, sites) first
        log.info("data: %s", splits.train.summary)
    log.info(
        "run %s: model=%s (%s parameters) norm=%s loss=%s optim=%s lr=%g, batch %d x %d rank(s), %d steps on "
        "%s, precision %s",
        run_dir,
        cfg.model.name,
        f"{weights:,}",
        cfg.norm.name,
        cfg.loss.name,
        cfg.optim.name,
        float(cfg.optim.lr),
        int(cfg.data.batch_size),
        ctx.world_size,
        prepared.total_steps,
        ctx.device,
        prepared.precision.name,
    )
    if emulated_bf16(prepared.precision, ctx.device):
        log.warning(
            "precision bf16-mixed on %s, which has no bf16 arithmetic (AVX-512 BF16, AMX or an Ampere+ GPU): "
            "it is emulated and slower than float32 (10x per FCN-8s step on an AVX2 CPU); "
            "trainer.precision=auto picks float32 here",
            ctx.device,
        )
    if cfg.data.get("site_batches"):
        log.info("site batches: every training batch from one site (per-site BN's training half)")
    log.info(
        "data %s (%s): %d train / %d val / %d test samples, %s targets, %d input channel(s)",
        cfg.data.name,
        cfg.data.get("root"),
        len(splits.train),
        len(splits.val),
        len(splits.test) if splits.test is not None else 0,
        splits.train.target_kind,
        splits.train.in_channels,
    )
    if prepared.resumed_from is not None:
        log.info("resumed at step %d of %d from %s", prepared.start, prepared.total_steps, prepared.resumed_from)


def _log_end(metrics: dict, run_dir: Path) -> None:
    main, report = metrics["main_metric"], metrics["report_metric"]
    best, test = metrics["val"]["best"], metrics["test"].get("best", {})
    tested = f"test {report} {test[report]:.4g}" if isinstance(test.get(report), (int, float)) else "no test split"
    log.info(
        "best val %s %.4g at step %s, %s; run: %s",
        main,
        best.get(main, float("nan")),
        best.get("step"),
        tested,
        run_dir,
    )


def _train(
    cfg: DictConfig,
    run_dir: Path,
    ctx,
    prepared: Prepared,
    started: float,
    after_step,
    step_fn,
    timing: Stopwatch,
    stop: StopRequest,
) -> dict:
    train_set = prepared.splits.train
    start = prepared.start
    net = distributed.wrap(prepared.model, ctx)
    if cfg.trainer.get("compile"):
        # Training steps only: evaluation and checkpoints use the plain module (same weights).
        net = compile_for_training(net, ctx.device, prepared.precision)

    trackers = None  # the run's trackers (TensorBoard and what logger= adds), on the main rank only
    if ctx.is_main:
        kind = train_set.target_kind
        trackers = Trackers(RunInfo(run_dir, cfg, start, ctx.world_size, MAIN_METRIC[kind], REPORT_METRIC[kind]))
        if not start:
            _write_split(run_dir, prepared.splits)
    try:
        return _loop(cfg, run_dir, ctx, prepared, started, after_step, step_fn, timing, stop, net, trackers)
    finally:
        if trackers:
            trackers.close()  # after finish(): nothing; after a stop or a failure: each tracker says so


def _loop(
    cfg: DictConfig,
    run_dir: Path,
    ctx,
    prepared: Prepared,
    started: float,
    after_step,
    step_fn,
    timing: Stopwatch,
    stop: StopRequest,
    net,
    trackers,
) -> dict:
    step_fn = step_fn or train_step  # looked up at call time, so a test may replace train_step
    splits, model, loss_fn = prepared.splits, prepared.model, prepared.loss_fn
    optimizer, scheduler, total_steps = prepared.optimizer, prepared.scheduler, prepared.total_steps
    start, best, last_val, freeze_step = prepared.start, prepared.best, prepared.last_val, prepared.freeze_step
    train_set, batch = splits.train, int(cfg.data.batch_size)
    if cfg.data.get("site_batches"):  # per-site BN's training half: each batch from one site
        by_site = check_site_batches(train_set, batch * ctx.world_size)
        sampler = SiteBatchSampler(by_site, batch, int(cfg.seed), start, total_steps, ctx.rank, ctx.world_size)
    else:
        sampler = StepBatchSampler(len(train_set), batch, int(cfg.seed), start, total_steps, ctx.rank, ctx.world_size)
    workers = int(cfg.data.num_workers)
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )
    eval_batch = int(cfg.data.get("val_batch_size", batch))
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_dir = run_dir / "checkpoints"
    main_metric = MAIN_METRIC[train_set.target_kind]

    progress = _progress(cfg, ctx, start, total_steps)
    train_time, images_seen = 0.0, 0
    # Each validation's main metric with the wall seconds since train() was called (for a resumed run,
    # those of the process that ran it): what `segbench bench` reads time to accuracy from, and what
    # the convergence check judges. A resumed run continues the history its checkpoint kept.
    history, eval_seconds = list(prepared.val_history), 0.0
    stop_at = cfg.trainer.get("stop_at")
    validations = cfg.trainer.get("validations")
    val_every = max(1, total_steps // int(validations)) if validations else int(cfg.trainer.val_every)
    done = start

    def checkpoint(name: str) -> None:
        with timing("checkpoints"):
            save_checkpoint(
                ckpt_dir / name,
                model,
                optimizer,
                scheduler,
                done,
                best,
                config,
                last_val,
                prepared.precision.scaler,
                history,
            )

    tick = time.perf_counter()
    fetched = time.perf_counter()
    # Starting to iterate draws a seed from torch's global RNG, which also drives dropout. A fresh
    # run draws it at step 0, before anything is saved; a resumed run's RNG is already where the
    # checkpoint left it, so it must not draw again, or every dropout mask after a resume shifts.
    rng = torch.get_rng_state()
    batches = iter(loader)
    if start:
        torch.set_rng_state(rng)
    for step, (images, target) in enumerate(batches, start=start):
        timing.add("data", time.perf_counter() - fetched)
        step_start = time.perf_counter()
        images, target = images.to(ctx.device, non_blocking=True), target.to(ctx.device, non_blocking=True)
        if prepared.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        train_mode(net, freeze_bn=step >= freeze_step)
        loss = step_fn(net, images, target, loss_fn, optimizer, prepared.precision)
        # One reduce per step carries the loss and whether any rank was asked to stop (a signal), so
        # every rank stops at the same step.
        reduced = distributed.all_reduce_sum(
            torch.stack(
                [loss.detach().cpu().double(), torch.tensor(float(stop.signum is not None), dtype=torch.float64)]
            ),
            ctx,
        )
        loss_value, stopping = float(reduced[0]) / ctx.world_size, bool(reduced[1] > 0)
        if not math.isfinite(loss_value):
            kept = (
                f"last good checkpoint: {ckpt_dir / 'last.pt'} (step {_saved_step(ckpt_dir / 'last.pt')})"
                if (ckpt_dir / "last.pt").is_file()
                else "no checkpoint was saved before it"
            )
            raise TrainingDiverged(
                f"loss became {loss_value} at step {step + 1}; stopped before updating the "
                f"weights; {kept}. Try a lower optim.lr"
            )
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = step + 1
        now = time.perf_counter()
        timing.add("steps", now - step_start)
        if step > start:  # the first step pays for allocation and warm-up; throughput is steady state
            train_time += now - tick
            images_seen += len(images) * ctx.world_size
        if trackers:
            trackers.scalar("train/loss", loss_value, done)
            trackers.scalar("train/lr", lr, done)  # under train/, not a lone flat chart on top
            trackers.scalar("train/images_seen", done * batch * ctx.world_size, done)
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{images_seen / max(train_time, 1e-9):.1f}")
        reached = False
        if done % val_every == 0 or done == total_steps:
            eval_start = time.perf_counter()
            last_val = validate(cfg, model, net, splits, loss_fn, ctx, trackers, done, eval_batch, timing)
            eval_seconds += time.perf_counter() - eval_start
            improved = last_val[main_metric] >= best.get(main_metric, -math.inf)
            history.append(
                {
                    "step": done,
                    "seconds": round(time.perf_counter() - started, 3),
                    "eval_seconds": round(eval_seconds, 3),
                    main_metric: last_val[main_metric],
                }
            )
            reached = stop_at is not None and last_val[main_metric] >= stop_at
            if cfg.trainer.get("until_plateau") and not reached:
                # Train each run until its own plateau, max_steps (or images, epochs) the cap.
                reached = plateau_reached(plateau(history, main_metric, float(cfg.trainer.plateau_epsilon)))
            if ctx.is_main:
                # The run's folder name first: a sweep's parallel members share one console.
                log.info(
                    "%s step %d/%d val: %s%s",
                    run_dir.name,
                    done,
                    total_steps,
                    summary_line(last_val),
                    " (best)" if improved else "",
                )
            if ctx.is_main and improved:
                best = {**last_val, "step": done}
                checkpoint("best.pt")
        if ctx.is_main and (done % int(cfg.trainer.checkpoint_every) == 0 or done == total_steps or reached):
            checkpoint("last.pt")
        if stopping:
            if ctx.is_main:
                checkpoint("last.pt")
            progress.close()
            raise Preempted(stop.signum or signal.SIGTERM, done, ckpt_dir / "last.pt", run_dir)
        if after_step is not None:
            after_step(done)
        tick = fetched = time.perf_counter()
        if reached:  # every rank saw the same (all-reduced) validation, so all stop together
            if ctx.is_main:
                why = (
                    f"reached trainer.stop_at={stop_at:g}"
                    if stop_at is not None and last_val[main_metric] >= stop_at
                    else "reached its plateau (trainer.until_plateau)"
                )
                log.info("val %s %.4g %s at step %d; stopping", main_metric, last_val[main_metric], why, done)
            break
    progress.close()
    total_steps = done

    best = distributed.broadcast_object(best, ctx)
    with timing("test"):
        test = test_split(
            cfg, model, net, splits, loss_fn, ctx, trackers, total_steps, eval_batch, last_val, best, ckpt_dir
        )
    metrics = {
        "val": {"final": last_val, "best": best, "history": history},
        "test": test,
        "main_metric": main_metric,
        "report_metric": REPORT_METRIC[train_set.target_kind],
        "steps": total_steps,
        "images_per_s": images_seen / train_time if train_time else None,
        "global_batch_size": batch * ctx.world_size,
        "world_size": ctx.world_size,
        "precision": prepared.precision.name,
        "norm": cfg.norm.name,
        "model": cfg.model.name,
        "batch_size": batch,
        "seed": int(cfg.seed),
        "hd95_convention": str(cfg.trainer.get("hd95", "monai")),
        "hd95_unit": getattr(train_set, "distance_unit", "mm"),
        "lr": float(cfg.optim.lr),
        "lr_applied": float(optimizer.param_groups[0]["initial_lr"]),
        "images_seen": total_steps * batch * ctx.world_size,
        "budget": _budget(cfg),
        "convergence": plateau(history, main_metric, float(cfg.trainer.get("plateau_epsilon", 0.01))),
        "train_samples": len(train_set),
        "val_samples": len(splits.val),
        "test_samples": len(splits.test) if splits.test is not None else 0,
        "norm_state": _mean_over_layers(norm_scalars(model)),
        # This process's wall seconds by phase (a resumed run: since its resume); "total" from
        # train() being called to metrics.json, the rest of it being logging and bookkeeping.
        "seconds": {**{k: round(v, 3) for k, v in timing.items()}, "total": round(time.perf_counter() - started, 3)},
    }
    if ctx.is_main:
        write_json(run_dir / "metrics.json", metrics)
        trackers.finish(metrics)  # after metrics.json: trackers may keep it (MLflow's artifacts)
        log.info("wrote %s", run_dir / "metrics.json")
    return metrics


def _write_split(run_dir: Path, splits) -> None:
    """``split.json``: which subjects each split holds (readers of whole subjects), so a reader can check
    that train and test share no subject, or no site under ``data.test_sites``."""

    def subjects(dataset):
        volumes = getattr(dataset, "volumes", None)
        return None if volumes is None else sorted({v.subject for v in volumes})

    found = {
        name: subjects(getattr(splits, name)) for name in ("train", "val", "test") if getattr(splits, name) is not None
    }
    if any(v is not None for v in found.values()):
        write_json(run_dir / "split.json", found)


def _budget(cfg: DictConfig) -> str:
    """What the training budget was set in: images (equal for every batch size), epochs or steps."""
    trainer = cfg.trainer
    if trainer.get("max_images"):
        return f"{int(trainer.max_images)} images"
    if trainer.get("max_epochs"):
        return f"{int(trainer.max_epochs)} epochs"
    return f"{int(trainer.max_steps)} steps" + (" (cap; until plateau)" if trainer.get("until_plateau") else "")


def _mean_over_layers(per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
    """The layers' reported norm state averaged, e.g. switchable norm's mean share of BN statistics."""
    keys = sorted({k for values in per_layer.values() for k in values})
    return {k: sum(v[k] for v in per_layer.values() if k in v) / sum(k in v for v in per_layer.values()) for k in keys}


def _saved_step(path: Path) -> int:
    return int(load_checkpoint(path).get("step", 0))


def _progress(cfg, ctx, start: int, total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not (cfg.trainer.progress and ctx.is_main),
        leave=False,
    )
