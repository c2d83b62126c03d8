"""What a run measures between steps and at its end: each validation (val split, the fixed
training images in eval mode, precise BN first where asked, TensorBoard scalars and overlays) and
the test split scored with the last and the best-by-val checkpoint, each at its val-chosen
threshold. The loop in ``trainer`` decides when; this module decides what.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time

import torch
from torch.utils.data import DataLoader

from segbench.eval.evaluate import evaluate, overlay
from segbench.nn.bn_stats import recompute_bn_stats
from segbench.nn.slot import norm_scalars
from segbench.train import distributed
from segbench.train.checkpoint import load_checkpoint
from segbench.train.hparams import NORM_GROUP, TEST_GROUP

log = logging.getLogger("segbench.train.trainer")  # the run's log lines keep the name they always had


class Stopwatch(dict):
    """Wall seconds per phase of a run, summed (``metrics.json`` ``seconds``): where its time went."""

    def add(self, phase: str, seconds: float) -> None:
        self[phase] = self.get(phase, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)


def summary_line(
    results: dict,
    keys=("loss", "dice", "dice_tuned", "threshold_tuned", "auroc", "ap", "hd95", "miou", "train_eval_loss"),
) -> str:
    """One log line of a validation's or test's numbers."""
    return ", ".join(f"{k} {results[k]:.4g}" for k in keys if isinstance(results.get(k), (int, float)))


def _scalars(results: dict) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def validate(cfg, model, net, splits, loss_fn, ctx, trackers, step, eval_batch, timing: Stopwatch) -> dict:
    k = int(cfg.trainer.get("precise_bn_batches") or 0)
    if k:
        # Its own generator, seeded by run and step: the same batches after a resume, and in a
        # packed run (whose members share the process-wide RNG) as in a separate one.
        order = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + step)
        batches = (
            images
            for images, _ in itertools.islice(
                DataLoader(splits.train, batch_size=int(cfg.data.batch_size), shuffle=True, generator=order), k
            )
        )
        with timing("precise_bn"):
            recompute_bn_stats(model, batches, ctx.device)
    # Evaluate the bare module: ranks hold different numbers of cases, and DDP's forward would
    # wait for the others at every batch (it syncs buffers).
    net.eval()
    hd95 = cfg.trainer.get("hd95", "monai") if cfg.trainer.get("val_hd95", True) else False
    with timing("val_hd95" if hd95 else "val"):
        results, first = evaluate(model, splits.val, loss_fn, ctx, eval_batch, hd95=hd95)
    results = _scalars(results)
    # Every arm's fit measured the same way: eval mode, fixed training images, no augmentation.
    with timing("train_eval"):
        fit, _ = evaluate(model, splits.train_eval, loss_fn, ctx, eval_batch, hd95=False)
    results["train_eval_loss"] = fit["loss"]
    with timing("tensorboard"):
        _log_validation(cfg, model, splits, trackers, step, results, first)
    return results


def _log_validation(cfg, model, splits, trackers, step, results, first) -> None:
    if trackers:
        for name, value in results.items():
            tag = "train/loss_eval_mode" if name == "train_eval_loss" else f"val/{name}"
            trackers.scalar(tag, value, step)
        for layer, values in norm_scalars(model).items():
            for key, value in values.items():
                trackers.scalar(f"{NORM_GROUP}/{layer}/{key}", value, step)
        if first is not None and cfg.trainer.log_images:
            kind = splits.train.target_kind
            trackers.images("val/overlay", overlay(*first, kind, int(cfg.trainer.log_images)), step)


def test_split(cfg, model, net, splits, loss_fn, ctx, trackers, step, eval_batch, last_val, best, ckpt_dir) -> dict:
    """Test-split results of the last and of the best-by-val checkpoint, each at its val-chosen threshold."""
    if splits.test is None:
        return {}

    def score(name: str, val: dict, ckpt_step: int) -> dict:
        net.eval()
        threshold = float(val.get("threshold_tuned", 0.5))
        # tune=False: a threshold tuned on test would be a choice made on test.
        results, _ = evaluate(
            model,
            splits.test,
            loss_fn,
            ctx,
            eval_batch,
            threshold=threshold,
            tune=False,
            hd95=cfg.trainer.get("hd95", "monai"),
        )
        if ctx.is_main:
            log.info(
                "test, %s checkpoint (step %d, threshold %.3f chosen on val): %s",
                name,
                ckpt_step,
                threshold,
                summary_line(results),
            )
        log_test(name, results)
        return {**results, "step": ckpt_step}

    def log_test(name: str, results: dict) -> None:
        if trackers:
            for key, value in _scalars(results).items():
                trackers.scalar(f"{TEST_GROUP}_{name}/{key}", value, step)

    out = {"last": score("last", last_val, step)}
    if not best or best.get("step") == step:  # the best checkpoint is the last one: its numbers under both names
        out["best"] = out["last"]
        log_test("best", {k: v for k, v in out["best"].items() if k != "step"})
        return out
    state = load_checkpoint(ckpt_dir / "best.pt") if ctx.is_main else None
    model.load_state_dict(distributed.broadcast_object(state, ctx)["model"])
    out["best"] = score("best", best, int(best["step"]))
    return out
