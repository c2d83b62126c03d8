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

import itertools
import json
import logging
import math
import sys
import time
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from segbench.analysis.bench_device import bench_device, describe, gemm_peak, step_flops, timed
from segbench.analysis.bench_tta import compare_candidates, line
from segbench.errors import OneLineArgumentParser, SegbenchError, at_least
from segbench.models import build_model
from segbench.nn import NORMS
from segbench.progress import progress
from segbench.train.losses import MultilabelLoss
from segbench.train.precision import precision_for
from segbench.train.step import compile_for_training, train_step


def _bare_step(model, images, target, optimizer):
    """What a researcher's own script does: nothing segbench-specific."""
    optimizer.zero_grad()
    loss = F.binary_cross_entropy_with_logits(model(images), target)
    loss.backward()
    optimizer.step()
    return loss


def _model(norm: str, in_channels: int, width: int, depth: int):
    torch.manual_seed(0)
    groups = {"num_groups": math.gcd(8, width)}
    # CBN without burn-in, so the bench times its compensated statistics, not plain BN.
    options = {"spade": {"hidden": 32}, "group": groups, "wsgroup": groups, "evonorms0": groups,
               "crossbatch": {"burnin": 0}}.get(norm)
    return build_model("resunet", in_channels, 1, norm=norm, norm_options=options, width=width, depth=depth)


def _inputs(batch: int, size, device):
    images = torch.randn(batch, 4, *size, device=device)
    return images, (torch.rand(batch, 1, *size, device=device) > 0.9).float()


def train_step_vs_bare(batch: int, size, steps: int, rounds: int, width: int, depth: int, device) -> dict:
    """segbench's ``train_step`` against the bare step, alternating rounds on random in-memory tensors."""
    images, target = _inputs(batch, size, device)
    ours, bare = _model("batch", 4, width, depth).to(device), _model("batch", 4, width, depth).to(device)
    opt_ours, opt_bare = torch.optim.Adam(ours.parameters()), torch.optim.Adam(bare.parameters())
    loss_fn = MultilabelLoss("bce")
    ours_step = lambda: float(train_step(ours, images, target, loss_fn, opt_ours))  # noqa: E731
    bare_step = lambda: _bare_step(bare, images, target, opt_bare).item()  # noqa: E731
    ours_step(), bare_step()  # warm-up
    t_ours = t_bare = 0.0
    for _ in range(rounds):
        t_ours += timed(ours_step, steps, device)
        t_bare += timed(bare_step, steps, device)
    n = batch * steps * rounds
    return {"segbench_step_images_per_s": n / t_ours, "bare_step_images_per_s": n / t_bare,
            "ratio": t_bare / t_ours}


def precision_settings(device, compiled: bool = True) -> list[tuple[str, bool, bool]]:
    """(trainer.precision, channels_last, compiled) settings worth timing on ``device``; on the CPU
    float32 channels-last is left out (its backward crashes in this torch build, and segbench
    refuses it). Compiled steps leave the memory format to inductor."""
    if device.type == "cuda":
        eager = [(p, cl, False) for p in ("32", "bf16-mixed", "16-mixed") for cl in (False, True)]
    else:
        eager = [("32", False, False), ("bf16-mixed", False, False), ("bf16-mixed", True, False)]
    return eager + ([("32", False, True), ("bf16-mixed", False, True)] if compiled else [])


def precision_speed(batch: int, size, steps: int, rounds: int, width: int, depth: int, device,
                    compiled: bool = True) -> dict:
    """``train_step`` images/s per ``trainer.precision``, memory format and ``trainer.compile``,
    rounds interleaved in one process (the machine's load hits every setting alike), ratios to
    float32 NCHW eager, and achieved FLOP/s (``torch.utils.flop_counter``) as a share of a GEMM peak
    measured here in the same dtype. A compiled step's compilation is its untimed warm-up."""
    images, target = _inputs(batch, size, device)
    loss_fn = MultilabelLoss("bce")
    steps_of = {}
    for name, channels_last, compile_it in precision_settings(device, compiled):
        model = _model("batch", 4, width, depth).to(device)
        x = images
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        opt, precision = torch.optim.Adam(model.parameters()), precision_for(name, device)
        net = compile_for_training(model, device, precision) if compile_it else model
        step = (lambda m, x, o, p: lambda: train_step(m, x, target, loss_fn, o, p))(net, x, opt, precision)
        step()  # warm-up (and compilation)
        steps_of[name + (" channels_last" if channels_last else "") + (" compiled" if compile_it else "")] = step
    flops = step_flops(steps_of["32"])  # the same arithmetic whatever the dtype
    seconds = dict.fromkeys(steps_of, 0.0)
    for _ in range(rounds):
        for key, step in steps_of.items():
            seconds[key] += timed(step, steps, device)
    per_s = {k: batch * steps * rounds / t for k, t in seconds.items()}
    dtypes = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    peaks = {name: gemm_peak(device, dtype) for name, dtype in dtypes.items() if any(k.startswith(name) for k in per_s)}
    achieved = {k: flops * steps * rounds / t for k, t in seconds.items()}
    return {"images_per_s": per_s, "relative_to_fp32": {k: v / per_s["32"] for k, v in per_s.items()},
            "flops_per_step": flops, "achieved_flop_per_s": achieved, "gemm_peak_flop_per_s": peaks,
            "share_of_gemm_peak": {k: achieved[k] / peaks[k.split()[0]] for k in achieved}}


def trainer_vs_bare(root: str, batch: int, steps: int, width: int, depth: int, rounds: int, device) -> dict:
    """The whole ``train()`` loop (loader, augmentation, logging) against a bare loop over the same
    model, batch size and data pre-loaded into memory, both in float32.

    The two are interleaved step by step (the bare step runs in the trainer's ``after_step``, outside
    its timed window): a shared machine's speed drifts by several percent within seconds, which
    swamped the few percent being measured when each ran for its own ten seconds. Each round is one
    run of each; the median of the rounds' ratios counts, with their spread.
    """
    import tempfile

    from torch.utils.data import DataLoader

    from segbench.config import compose
    from segbench.data import build_datasets
    from segbench.train.trainer import train

    cfg = compose([f"data.root={root}", f"data.batch_size={batch}", f"model.width={width}", f"model.depth={depth}",
                   f"trainer.max_steps={steps}", f"trainer.val_every={10 * steps}", "trainer.progress=false",
                   f"trainer.device={device.type}", f"trainer.checkpoint_every={10 * steps}", "trainer.log_images=0",
                   "trainer.precision=32"])
    train_set = build_datasets(dict(cfg.data)).train
    batches = [(x.to(device), y.to(device))
               for x, y in itertools.islice(DataLoader(train_set, batch_size=batch, shuffle=True), steps)]

    def one_round() -> tuple[float, float]:
        model = _model("batch", train_set.in_channels, width, depth).to(device).train()
        opt = torch.optim.Adam(model.parameters())
        bare_seconds = []

        def bare_step(step: int) -> None:
            images, target = batches[(step - 1) % len(batches)]
            seconds = timed(lambda: _bare_step(model, images, target, opt).item(), 1, device)
            if step > 1:  # the trainer does not time its first step (warm-up) either
                bare_seconds.append(seconds)

        with tempfile.TemporaryDirectory() as run_dir:
            ours = train(cfg, run_dir, after_step=bare_step)["images_per_s"]
        return ours, len(bare_seconds) * batch / sum(bare_seconds)

    ours, theirs = [], []
    quiet = logging.getLogger("segbench")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        for _ in progress(range(rounds), "rounds", rounds, "round"):
            trainer_rate, bare_rate = one_round()
            ours.append(trainer_rate)
            theirs.append(bare_rate)
    finally:
        quiet.setLevel(level)
    ratios = [o / t for o, t in zip(ours, theirs)]
    return {"trainer_images_per_s": float(np.median(ours)), "bare_loop_images_per_s": float(np.median(theirs)),
            "ratio_trainer_over_bare": float(np.median(ratios)), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_per_round": ratios}


def loader_throughput(root: str, batch: int, batches: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    from segbench.data.brats import BratsSlices
    from segbench.data.common import StepBatchSampler

    dataset = BratsSlices(root, "train")
    sampler = StepBatchSampler(len(dataset), batch, 0, 0, batches)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - start)


def per_norm(batch: int, size, steps: int, width: int, depth: int, device) -> dict:
    images, target = _inputs(batch, size, device)
    out = {}
    warnings.filterwarnings("ignore", message="norm=syncbatch outside")
    for norm in progress(sorted(NORMS), "norms", len(NORMS), "norm"):
        model = _model(norm, 4, width, depth).to(device)
        opt = torch.optim.Adam(model.parameters())
        step = lambda: train_step(model, images, target, MultilabelLoss("bce"), opt)  # noqa: E731
        step()
        out[norm] = batch * steps / timed(step, steps, device)
    base = out["batch"]
    return {"images_per_s": out, "relative_to_batch": {k: v / base for k, v in out.items()}}


def per_norm_3d(batch: int, patch, steps: int, width: int, depth: int, device) -> dict:
    """3-D training voxels/s per norm (``model=resunet3d``), for every norm with a 3-D form."""
    from segbench.models import ResUNet
    from segbench.nn.norms import has_3d_form

    images = torch.randn(batch, 4, *patch, device=device)
    target = (torch.rand(batch, 1, *patch, device=device) > 0.9).float()
    out = {}
    norms = [n for n in sorted(NORMS) if has_3d_form(n)]
    for norm in progress(norms, "3-D norms", len(norms), "norm"):
        torch.manual_seed(0)
        options = {"spade": {"hidden": 16}, "group": {"num_groups": 4}, "wsgroup": {"num_groups": 4},
                   "evonorms0": {"num_groups": 4}}.get(norm)
        model = ResUNet(4, 1, width=width, depth=depth, norm=norm, norm_options=options, dims=3).to(device)
        opt = torch.optim.Adam(model.parameters())
        step = lambda: train_step(model, images, target, MultilabelLoss("bce"), opt)  # noqa: E731
        step()
        out[norm] = batch * math.prod(patch) * steps / timed(step, steps, device)
    return {"voxels_per_s": out, "relative_to_batch": {k: v / out["batch"] for k, v in out.items()},
            "patch": list(patch), "batch_size": batch, "model": f"resunet3d width={width} depth={depth}"}


def say(message: str) -> None:
    """What the bench is timing now: it takes minutes, and the JSON comes only at the end."""
    print(f"bench: {message} ...", file=sys.stderr, flush=True)


def summary(report: dict) -> list[str]:
    """The figures a reader wants, one line each."""
    from segbench.analysis.bench_pack import lines as pack_lines
    from segbench.analysis.bench_seeds import lines as seed_lines

    lines = ([f"device: {report['device']}"] + pack_lines(report.get("packing_ceiling"))
             + seed_lines(report.get("run_breakdown"), report.get("seeds_per_hour")))
    if "train_step" not in report:  # --only-seeds
        return lines
    step, loop = report["train_step"], report["trainer_loop"]
    lines.append(f"train_step / bare step: {step['ratio']:.3f} ({step['segbench_step_images_per_s']:.1f} vs "
                 f"{step['bare_step_images_per_s']:.1f} images/s)")
    lines.append(f"whole train() loop / bare loop over pre-loaded batches, interleaved step by step: median "
                 f"{loop['ratio_trainer_over_bare']:.3f} "
                 f"(rounds {', '.join(f'{r:.3f}' for r in loop['ratio_per_round'])})")
    lines.append(f"loader alone: {report['loader']['images_per_s']:.0f} images/s with {report['loader']['workers']} "
                 f"workers = {report['loader']['ratio_loader_over_training']:.0f}x training")
    if "precision" in report:
        p = report["precision"]
        for key, per_s in p["images_per_s"].items():
            lines.append(f"precision {key}: {per_s:.1f} images/s ({p['relative_to_fp32'][key]:.2f}x float32), "
                         f"{p['achieved_flop_per_s'][key] / 1e9:.1f} GFLOP/s = {p['share_of_gemm_peak'][key]:.0%} of "
                         "this device's GEMM peak in that dtype")
    if "per_norm_3d" in report:
        p3 = report["per_norm_3d"]
        lines.append(f"3-D ({p3['model']}, batch {p3['batch_size']}, patch {'x'.join(map(str, p3['patch']))}): "
                     + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in p3["voxels_per_s"].items()) + " Mvoxels/s")
    for name, result in report.get("time_to_accuracy", {}).items():
        lines.append(f"time to accuracy, {result['skipped']}" if "skipped" in result else
                     "time to accuracy, " + line(name, result))
    return lines


def main(argv: list[str] | None = None) -> dict:
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
    parser.add_argument("--workers", type=at_least(0), default=0, help="loader workers (the data config's default is 0)")
    parser.add_argument("--target-dice", type=float, default=0.85, help="val Dice that time to accuracy waits for")
    parser.add_argument("--tta-steps", type=at_least(1), default=600, help="step budget of each time-to-accuracy run")
    parser.add_argument("--tta-val-every", type=at_least(1), default=50)
    parser.add_argument("--skip-norms", action="store_true")
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument("--skip-compile", action="store_true", help="leave trainer.compile out of the precision table "
                        "(compiling takes about a minute per setting on 2 CPU cores)")
    parser.add_argument("--skip-tta", action="store_true", help="leave out time to accuracy (the longest part)")
    parser.add_argument("--skip-3d", action="store_true", help="leave out 3-D voxels/s per norm")
    parser.add_argument("--patch", type=at_least(1), nargs=3, default=[32, 48, 48], help="3-D patch (D H W)")
    parser.add_argument("--skip-seeds", action="store_true", help="leave out the run breakdown and seed-runs per hour")
    parser.add_argument("--only-seeds", action="store_true", help="only the run breakdown and seed-runs per hour")
    parser.add_argument("--seeds", type=at_least(1), default=8, help="seeds per way in seed-runs per hour")
    parser.add_argument("--seed-steps", type=at_least(1), default=150, help="steps of each of those runs "
                        "(the study's 600 shortened; validations keep the study's 1 per 50 steps)")
    parser.add_argument("--seed-val-every", type=at_least(1), default=50)
    parser.add_argument("--packs", default="4,8", help="comma-separated K of the packed ways")
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
    report = {"device": describe(device), "device_type": device.type, "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, "size": list(size), "model": f"resunet width={args.width} depth={args.depth}"}
    if args.only_seeds:
        return _seeds(report, args, packs, "1/1")
    phases = 8
    say(f"1/{phases} segbench's train_step vs a bare PyTorch step on {report['device']}")
    report["train_step"] = train_step_vs_bare(args.batch_size, size, args.steps, args.rounds, args.width, args.depth,
                                              device)
    say(f"2/{phases} the whole trainer vs a bare loop on {args.data} ({args.loop_rounds} rounds)")
    report["trainer_loop"] = trainer_vs_bare(args.data, args.batch_size, args.loop_steps, args.width, args.depth,
                                             args.loop_rounds, device)
    say(f"3/{phases} the data loader alone")
    loader = loader_throughput(args.data, args.batch_size, 50, args.workers)
    report["loader"] = {"images_per_s": loader, "workers": args.workers,
                        "ratio_loader_over_training": loader / report["trainer_loop"]["trainer_images_per_s"]}
    if not args.skip_norms:
        say(f"4/{phases} each of the {len(NORMS)} norms")
        report["per_norm"] = per_norm(args.batch_size, size, args.steps, args.width, args.depth, device)
    if not args.skip_precision:
        say(f"5/{phases} precision, memory format and trainer.compile, with FLOP/s against a measured GEMM peak")
        report["precision"] = precision_speed(args.batch_size, size, args.steps, args.rounds, args.width, args.depth,
                                              device, compiled=not args.skip_compile)
    if not args.skip_3d:
        say(f"6/{phases} 3-D training voxels/s per norm (resunet3d, patch {'x'.join(map(str, args.patch))})")
        report["per_norm_3d"] = per_norm_3d(2, tuple(args.patch), args.steps, 8, 4, device)
    if not args.skip_tta:
        say(f"7/{phases} time to val Dice {args.target_dice:g} on {args.data}")
        report["time_to_accuracy"] = compare_candidates(args.data, args.target_dice, args.tta_steps,
                                                        args.tta_val_every, device.type, say)
    if not args.skip_seeds:
        return _seeds(report, args, packs, f"8/{phases}")
    return _finish(report)


def _seeds(report: dict, args, packs: list[int], phase: str) -> dict:
    from segbench.analysis import bench_seeds

    say(f"{phase} where a study run's time goes, and seed-runs per hour packed (K={args.packs}) vs one seed per "
        f"process ({args.seeds} seeds of {args.seed_steps} steps each way)")
    from segbench.analysis.bench_pack import packing_ceiling

    report["packing_ceiling"] = packing_ceiling(packs, torch.device(report["device_type"]))
    report["run_breakdown"] = bench_seeds.breakdown(args.data, args.seed_steps, args.seed_val_every)
    report["seeds_per_hour"] = bench_seeds.seeds_per_hour(args.data, args.seeds, args.seed_steps,
                                                          args.seed_val_every, packs,
                                                          vmap_too=report["device_type"] == "cpu")
    return _finish(report)


def _finish(report: dict) -> dict:
    for text in summary(report):
        print(f"bench: {text}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return report
