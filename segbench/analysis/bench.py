"""``segbench bench``: training images/s of segbench against a bare PyTorch loop, measured side by
side in one process (its step alone, and its whole ``train()`` loop with loader and logging),
the data pipeline's images/s alone, and images/s per norm.

Prints one JSON object. Timings alternate between the two loops in rounds so that a noisy,
shared machine slows both alike; the ratio is the figure to quote.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from segbench.errors import OneLineArgumentParser, at_least
from segbench.models import build_model
from segbench.nn import NORMS
from segbench.progress import progress
from segbench.train.losses import MultilabelLoss
from segbench.train.precision import precision_for
from segbench.train.step import train_step


def _bare_step(model, images, target, optimizer):
    """What a researcher's own script does: nothing segbench-specific."""
    optimizer.zero_grad()
    loss = F.binary_cross_entropy_with_logits(model(images), target)
    loss.backward()
    optimizer.step()
    return loss


def _time(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def _model(norm: str, in_channels: int, width: int, depth: int):
    torch.manual_seed(0)
    groups = {"num_groups": math.gcd(8, width)}
    # CBN without burn-in, so the bench times its compensated statistics, not plain BN.
    options = {"spade": {"hidden": 32}, "group": groups, "wsgroup": groups, "evonorms0": groups,
               "crossbatch": {"burnin": 0}}.get(norm)
    return build_model("resunet", in_channels, 1, norm=norm, norm_options=options, width=width, depth=depth)


def train_step_vs_bare(batch: int, size, steps: int, rounds: int, width: int, depth: int) -> dict:
    """segbench's ``train_step`` against the bare step, alternating rounds on random in-memory tensors."""
    images = torch.randn(batch, 4, *size)
    target = (torch.rand(batch, 1, *size) > 0.9).float()
    ours, bare = _model("batch", 4, width, depth), _model("batch", 4, width, depth)
    opt_ours, opt_bare = torch.optim.Adam(ours.parameters()), torch.optim.Adam(bare.parameters())
    loss_fn = MultilabelLoss("bce")
    ours_step = lambda: float(train_step(ours, images, target, loss_fn, opt_ours))  # noqa: E731
    bare_step = lambda: _bare_step(bare, images, target, opt_bare).item()  # noqa: E731
    ours_step(), bare_step()  # warm-up
    t_ours = t_bare = 0.0
    for _ in range(rounds):
        t_ours += _time(ours_step, steps)
        t_bare += _time(bare_step, steps)
    n = batch * steps * rounds
    return {"segbench_step_images_per_s": n / t_ours, "bare_step_images_per_s": n / t_bare,
            "ratio": t_bare / t_ours}


PRECISION_SETTINGS = (("32", False), ("bf16-mixed", False), ("bf16-mixed", True))


def precision_speed(batch: int, size, steps: int, rounds: int, width: int, depth: int) -> dict:
    """``train_step`` images/s per ``trainer.precision`` and memory format, rounds interleaved in one
    process (the machine's load hits every setting alike); ratios are to float32 NCHW."""
    images = torch.randn(batch, 4, *size)
    target = (torch.rand(batch, 1, *size) > 0.9).float()
    loss_fn = MultilabelLoss("bce")
    steps_of = {}
    for name, channels_last in PRECISION_SETTINGS:
        model = _model("batch", 4, width, depth)
        x = images
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        opt, precision = torch.optim.Adam(model.parameters()), precision_for(name, torch.device("cpu"))
        step = (lambda m, x, o, p: lambda: train_step(m, x, target, loss_fn, o, p))(model, x, opt, precision)
        step()  # warm-up
        steps_of[f"{name}{' channels_last' if channels_last else ''}"] = step
    seconds = dict.fromkeys(steps_of, 0.0)
    for _ in range(rounds):
        for key, step in steps_of.items():
            seconds[key] += _time(step, steps)
    per_s = {k: batch * steps * rounds / t for k, t in seconds.items()}
    return {"images_per_s": per_s, "relative_to_fp32": {k: v / per_s["32"] for k, v in per_s.items()}}


def trainer_vs_bare(root: str, batch: int, steps: int, width: int, depth: int, rounds: int = 3) -> dict:
    """The whole ``train()`` loop (loader, logging, progress bar) against a bare loop over the same
    model, batch size and data, pre-loaded into memory; the median of ``rounds`` paired ratios counts."""
    import tempfile

    from segbench.config import compose
    from segbench.train.trainer import train

    cfg = compose([f"data.root={root}", f"data.batch_size={batch}", f"model.width={width}", f"model.depth={depth}",
                   f"trainer.max_steps={steps}", f"trainer.val_every={10 * steps}", "trainer.progress=false",
                   "trainer.device=cpu", f"trainer.checkpoint_every={10 * steps}", "trainer.log_images=0"])
    from segbench.data import build_datasets
    from torch.utils.data import DataLoader

    train_set = build_datasets(dict(cfg.data)).train
    batches = list(itertools.islice(DataLoader(train_set, batch_size=batch, shuffle=True), steps))

    def bare() -> float:
        model = _model("batch", train_set.in_channels, width, depth)
        opt = torch.optim.Adam(model.parameters())
        model.train()
        _bare_step(model, *batches[0], opt).item()  # warm-up, as the trainer's first step is timed too
        return len(batches) * batch / _time(lambda: [_bare_step(model, x, y, opt).item() for x, y in batches], 1)

    ours, theirs = [], []
    for _ in range(rounds):  # alternate, so that a noisy neighbour slows both alike
        theirs.append(bare())
        with tempfile.TemporaryDirectory() as run_dir:
            ours.append(train(cfg, run_dir)["images_per_s"])
    ratios = sorted(o / t for o, t in zip(ours, theirs))
    return {"trainer_images_per_s": float(np.median(ours)), "bare_loop_images_per_s": float(np.median(theirs)),
            "ratio_trainer_over_bare": ratios[len(ratios) // 2], "ratio_per_round": ratios}


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


def per_norm(batch: int, size, steps: int, width: int, depth: int) -> dict:
    images = torch.randn(batch, 4, *size)
    target = (torch.rand(batch, 1, *size) > 0.9).float()
    out = {}
    warnings.filterwarnings("ignore", message="norm=syncbatch outside")
    for norm in progress(sorted(NORMS), "norms", len(NORMS), "norm"):
        model = _model(norm, 4, width, depth)
        opt = torch.optim.Adam(model.parameters())
        step = lambda: train_step(model, images, target, MultilabelLoss("bce"), opt)  # noqa: E731
        step()
        out[norm] = batch * steps / _time(step, steps)
    base = out["batch"]
    return {"images_per_s": out, "relative_to_batch": {k: v / base for k, v in out.items()}}


def say(message: str) -> None:
    """What the bench is timing now: it takes minutes, and the JSON comes only at the end."""
    print(f"bench: {message} ...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = OneLineArgumentParser(prog="segbench bench")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--size", type=at_least(1), nargs=2, default=[96, 112])
    parser.add_argument("--steps", type=at_least(1), default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=at_least(1), default=4)
    parser.add_argument("--loop-steps", type=at_least(1), default=40, help="steps of the whole-trainer comparison")
    parser.add_argument("--loop-rounds", type=at_least(1), default=3)
    parser.add_argument("--width", type=at_least(1), default=16)
    parser.add_argument("--depth", type=at_least(1), default=4)
    parser.add_argument("--data", default="data/brain_phantom", help="BraTS folder for the loader figure")
    parser.add_argument("--workers", type=at_least(0), default=0, help="loader workers (the data config's default is 0)")
    parser.add_argument("--skip-norms", action="store_true")
    parser.add_argument("--skip-precision", action="store_true")
    args = parser.parse_args(argv)
    size = tuple(args.size)
    from segbench.data.brats import find_subjects

    find_subjects(args.data)  # a missing data folder is one line now, not after minutes of timing
    report = {"device": "cpu", "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "size": list(size), "model": f"resunet width={args.width} depth={args.depth}"}
    say("1/5 segbench's train_step vs a bare PyTorch step")
    report["train_step"] = train_step_vs_bare(args.batch_size, size, args.steps, args.rounds, args.width, args.depth)
    say(f"2/5 the whole trainer vs a bare loop on {args.data} ({args.loop_rounds} rounds)")
    report["trainer_loop"] = trainer_vs_bare(args.data, args.batch_size, args.loop_steps, args.width, args.depth,
                                             args.loop_rounds)
    say("3/5 the data loader alone")
    loader = loader_throughput(args.data, args.batch_size, 50, args.workers)
    report["loader"] = {"images_per_s": loader, "workers": args.workers,
                        "ratio_loader_over_training": loader / report["trainer_loop"]["trainer_images_per_s"]}
    if not args.skip_norms:
        say(f"4/5 each of the {len(NORMS)} norms")
        report["per_norm"] = per_norm(args.batch_size, size, args.steps, args.width, args.depth)
    if not args.skip_precision:
        say("5/5 float32 vs bf16 autocast, NCHW vs channels_last")
        report["precision"] = precision_speed(args.batch_size, size, args.steps, args.rounds, args.width, args.depth)
    print(json.dumps(report, indent=2))
    return report
