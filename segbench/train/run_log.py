"""What a run says about itself: the first log lines (what it trains, on which data), the last one
(where its results are), split.json (which subjects each split holds) and the progress bar.

Kept apart from the loop in ``trainer``; the lines keep the logger name they always had, which users'
log filters and the tests read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from segbench.io import write_json
from segbench.train.precision import emulated_bf16
from segbench.train.prepare import Prepared

log = logging.getLogger("segbench.train.trainer")


def log_start(cfg: DictConfig, run_dir: Path, ctx, prepared: Prepared) -> None:
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


def log_end(metrics: dict, run_dir: Path) -> None:
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


def write_split(run_dir: Path, splits) -> None:
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


def progress_bar(cfg, ctx, start: int, total: int):
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
