"""``segbench bench``: on the device it runs on (the GPU when there is one, ``--device``), training
images/s of segbench against a bare PyTorch loop measured side by side in one process (its step
alone, and its whole ``train()`` loop with loader and logging), the data pipeline alone, images/s
per norm, per precision and memory format with achieved FLOP/s against a measured GEMM peak, and
time to accuracy: wall seconds until val Dice reaches a target, for segbench's ResUNet and MONAI's
UNet trained by the same loop.

Prints one JSON object on stdout and a readable summary on stderr. Timings alternate between the
contenders in rounds so that a noisy, shared machine slows both alike; ratios are what to quote.
"""

from __future__ import annotations

import json
import sys

import torch

from segbench.bench.device import bench_device, describe
from segbench.bench.training import (
    loader_throughput,
    per_norm,
    per_norm_3d,
    precision_speed,
    train_step_vs_bare,
    trainer_vs_bare,
)
from segbench.bench.tta import compare_candidates, line
from segbench.errors import OneLineArgumentParser, SegbenchError, at_least
from segbench.nn import NORMS


def say(message: str) -> None:
    """What the bench is timing now: it takes minutes, and the JSON comes only at the end."""
    print(f"bench: {message} ...", file=sys.stderr, flush=True)


def summary(report: dict) -> list[str]:
    """The figures a reader wants, one line each."""
    from segbench.bench.pack import lines as pack_lines
    from segbench.bench.seeds import lines as seed_lines

    lines = (
        [f"device: {report['device']}"]
        + pack_lines(report.get("packing_ceiling"))
        + seed_lines(report.get("run_breakdown"), report.get("seeds_per_hour"))
    )
    if "train_step" not in report:  # --only-seeds
        return lines
    step, loop = report["train_step"], report["trainer_loop"]
    lines.append(
        f"train_step / bare step: {step['ratio']:.3f} ({step['segbench_step_images_per_s']:.1f} vs "
        f"{step['bare_step_images_per_s']:.1f} images/s)"
    )
    lines.append(
        f"whole train() loop / bare loop over pre-loaded batches, interleaved step by step: median "
        f"{loop['ratio_trainer_over_bare']:.3f} "
        f"(rounds {', '.join(f'{r:.3f}' for r in loop['ratio_per_round'])})"
    )
    lines.append(
        f"loader alone: {report['loader']['images_per_s']:.0f} images/s with {report['loader']['workers']} "
        f"workers = {report['loader']['ratio_loader_over_training']:.0f}x training"
    )
    if "precision" in report:
        p = report["precision"]
        for key, per_s in p["images_per_s"].items():
            lines.append(
                f"precision {key}: {per_s:.1f} images/s ({p['relative_to_fp32'][key]:.2f}x float32), "
                f"{p['achieved_flop_per_s'][key] / 1e9:.1f} GFLOP/s = {p['share_of_gemm_peak'][key]:.0%} of "
                "this device's GEMM peak in that dtype"
            )
    if "per_norm_3d" in report:
        p3 = report["per_norm_3d"]
        lines.append(
            f"3-D ({p3['model']}, batch {p3['batch_size']}, patch {'x'.join(map(str, p3['patch']))}): "
            + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in p3["voxels_per_s"].items())
            + " Mvoxels/s"
        )
    for name, result in report.get("time_to_accuracy", {}).items():
        lines.append(
            f"time to accuracy, {result['skipped']}"
            if "skipped" in result
            else "time to accuracy, " + line(name, result)
        )
    return lines


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="segbench bench")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--size", type=at_least(1), nargs=2, default=[96, 112])
    parser.add_argument("--steps", type=at_least(1), default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=at_least(1), default=4)
    parser.add_argument("--loop-steps", type=at_least(1), default=40, help="steps of the whole-trainer comparison")
    parser.add_argument("--loop-rounds", type=at_least(1), default=5)
    parser.add_argument("--width", type=at_least(1), default=16)
    parser.add_argument("--depth", type=at_least(1), default=4)
    parser.add_argument("--data", default="data/brain_phantom", help="BraTS folder for the loader and time to accuracy")
    parser.add_argument(
        "--workers", type=at_least(0), default=0, help="loader workers (the data config's default is 0)"
    )
    parser.add_argument("--target-dice", type=float, default=0.85, help="val Dice that time to accuracy waits for")
    parser.add_argument("--tta-steps", type=at_least(1), default=600, help="step budget of each time-to-accuracy run")
    parser.add_argument("--tta-val-every", type=at_least(1), default=50)
    parser.add_argument("--skip-norms", action="store_true")
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument(
        "--skip-compile",
        action="store_true",
        help="leave trainer.compile out of the precision table "
        "(compiling takes about a minute per setting on 2 CPU cores)",
    )
    parser.add_argument("--skip-tta", action="store_true", help="leave out time to accuracy (the longest part)")
    parser.add_argument("--skip-3d", action="store_true", help="leave out 3-D voxels/s per norm")
    parser.add_argument("--patch", type=at_least(1), nargs=3, default=[32, 48, 48], help="3-D patch (D H W)")
    parser.add_argument("--skip-seeds", action="store_true", help="leave out the run breakdown and seed-runs per hour")
    parser.add_argument("--only-seeds", action="store_true", help="only the run breakdown and seed-runs per hour")
    parser.add_argument("--seeds", type=at_least(1), default=8, help="seeds per way in seed-runs per hour")
    parser.add_argument(
        "--seed-steps",
        type=at_least(1),
        default=150,
        help="steps of each of those runs (the study's 600 shortened; validations keep the study's 1 per 50 steps)",
    )
    parser.add_argument("--seed-val-every", type=at_least(1), default=50)
    parser.add_argument("--packs", default="4,8", help="comma-separated K of the packed ways")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        packs = [int(k) for k in args.packs.split(",") if k.strip()]
    except ValueError:
        raise SegbenchError(f"--packs={args.packs!r}: give comma-separated positive numbers, e.g. 4,8") from None
    if not packs or min(packs) < 1:
        raise SegbenchError(f"--packs={args.packs!r}: give comma-separated positive numbers, e.g. 4,8")
    if not 0 < args.target_dice < 1:
        raise SegbenchError(f"--target-dice={args.target_dice:g} must be between 0 and 1")
    device = bench_device(args.device)
    size = tuple(args.size)
    from segbench.data.brats import find_subjects

    find_subjects(args.data)  # a missing data folder is one line now, not after minutes of timing
    report = {
        "device": describe(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "size": list(size),
        "model": f"resunet width={args.width} depth={args.depth}",
    }
    if args.only_seeds:
        return _seeds(report, args, packs, "1/1")
    _timings(report, args, size, device)
    if not args.skip_seeds:
        return _seeds(report, args, packs, "8/8")
    return _finish(report)


def _timings(report: dict, args, size: tuple, device) -> None:
    """Phases 1-7: the step, the trainer, the loader, each norm, precision, 3-D, time to accuracy."""
    phases = 8
    say(f"1/{phases} segbench's train_step vs a bare PyTorch step on {report['device']}")
    report["train_step"] = train_step_vs_bare(
        args.batch_size, size, args.steps, args.rounds, args.width, args.depth, device
    )
    say(f"2/{phases} the whole trainer vs a bare loop on {args.data} ({args.loop_rounds} rounds)")
    report["trainer_loop"] = trainer_vs_bare(
        args.data, args.batch_size, args.loop_steps, args.width, args.depth, args.loop_rounds, device
    )
    say(f"3/{phases} the data loader alone")
    loader = loader_throughput(args.data, args.batch_size, 50, args.workers)
    report["loader"] = {
        "images_per_s": loader,
        "workers": args.workers,
        "ratio_loader_over_training": loader / report["trainer_loop"]["trainer_images_per_s"],
    }
    if not args.skip_norms:
        say(f"4/{phases} each of the {len(NORMS)} norms")
        report["per_norm"] = per_norm(args.batch_size, size, args.steps, args.width, args.depth, device)
    if not args.skip_precision:
        say(f"5/{phases} precision, memory format and trainer.compile, with FLOP/s against a measured GEMM peak")
        report["precision"] = precision_speed(
            args.batch_size,
            size,
            args.steps,
            args.rounds,
            args.width,
            args.depth,
            device,
            compiled=not args.skip_compile,
        )
    if not args.skip_3d:
        say(f"6/{phases} 3-D training voxels/s per norm (resunet3d, patch {'x'.join(map(str, args.patch))})")
        report["per_norm_3d"] = per_norm_3d(2, tuple(args.patch), args.steps, 8, 4, device)
    if not args.skip_tta:
        say(f"7/{phases} time to val Dice {args.target_dice:g} on {args.data}")
        report["time_to_accuracy"] = compare_candidates(
            args.data, args.target_dice, args.tta_steps, args.tta_val_every, device.type, say
        )


def _seeds(report: dict, args, packs: list[int], phase: str) -> dict:
    from segbench.bench import seeds as bench_seeds

    say(
        f"{phase} where a study run's time goes, and seed-runs per hour packed (K={args.packs}) vs one seed per "
        f"process ({args.seeds} seeds of {args.seed_steps} steps each way)"
    )
    from segbench.bench.pack import packing_ceiling

    report["packing_ceiling"] = packing_ceiling(packs, torch.device(report["device_type"]))
    report["run_breakdown"] = bench_seeds.breakdown(args.data, args.seed_steps, args.seed_val_every)
    report["seeds_per_hour"] = bench_seeds.seeds_per_hour(
        args.data, args.seeds, args.seed_steps, args.seed_val_every, packs, vmap_too=report["device_type"] == "cpu"
    )
    return _finish(report)


def _finish(report: dict) -> dict:
    for text in summary(report):
        print(f"bench: {text}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return report
