"""The bench's training timings: segbench's step and whole ``train()`` loop against a bare PyTorch
loop, the loader alone, images/s per norm (2-D and 3-D) and per precision with FLOP/s.

Contenders alternate in rounds inside one process, so a shared machine slows them alike.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from segbench.bench.device import gemm_peak, step_flops, timed
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


def bench_model(norm: str, in_channels: int, width: int, depth: int):
    torch.manual_seed(0)
    groups = {"num_groups": math.gcd(8, width)}
    # CBN without burn-in, so the bench times its compensated statistics, not plain BN.
    options = {
        "spade": {"hidden": 32},
        "group": groups,
        "ws_group": groups,
        "evonorm_s0": groups,
        "crossbatch": {"burnin": 0},
    }.get(norm)
    return build_model("resunet", in_channels, 1, norm=norm, norm_options=options, width=width, depth=depth)


def bench_inputs(batch: int, size, device):
    images = torch.randn(batch, 4, *size, device=device)
    return images, (torch.rand(batch, 1, *size, device=device) > 0.9).float()


def train_step_vs_bare(batch: int, size, steps: int, rounds: int, width: int, depth: int, device) -> dict:
    """segbench's ``train_step`` against the bare step, alternating rounds on random in-memory tensors."""
    images, target = bench_inputs(batch, size, device)
    ours, bare = bench_model("batch", 4, width, depth).to(device), bench_model("batch", 4, width, depth).to(device)
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
    return {"segbench_step_images_per_s": n / t_ours, "bare_step_images_per_s": n / t_bare, "ratio": t_bare / t_ours}


def precision_settings(device, compiled: bool = True) -> list[tuple[str, bool, bool]]:
    """(trainer.precision, channels_last, compiled) settings worth timing on ``device``; on the CPU
    float32 channels-last is left out (its backward crashes in this torch build, and segbench
    refuses it). Compiled steps leave the memory format to inductor."""
    if device.type == "cuda":
        eager = [(p, cl, False) for p in ("32", "bf16-mixed", "16-mixed") for cl in (False, True)]
    else:
        eager = [("32", False, False), ("bf16-mixed", False, False), ("bf16-mixed", True, False)]
    return eager + ([("32", False, True), ("bf16-mixed", False, True)] if compiled else [])


def precision_speed(
    batch: int, size, steps: int, rounds: int, width: int, depth: int, device, compiled: bool = True
) -> dict:
    """``train_step`` images/s per ``trainer.precision``, memory format and ``trainer.compile``,
    rounds interleaved in one process (the machine's load hits every setting alike), ratios to
    float32 NCHW eager, and achieved FLOP/s (``torch.utils.flop_counter``) as a share of a GEMM peak
    measured here in the same dtype. A compiled step's compilation is its untimed warm-up."""
    images, target = bench_inputs(batch, size, device)
    loss_fn = MultilabelLoss("bce")
    steps_of = {}
    for name, channels_last, compile_it in precision_settings(device, compiled):
        model = bench_model("batch", 4, width, depth).to(device)
        x = images
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        opt, precision = torch.optim.Adam(model.parameters()), precision_for(name, device)
        net = compile_for_training(model, device, precision) if compile_it else model
        step = (lambda m, x, o, p: lambda: train_step(m, x, target, loss_fn, o, p))(net, x, opt, precision)  # noqa: B023 - called in this iteration
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
    return {
        "images_per_s": per_s,
        "relative_to_fp32": {k: v / per_s["32"] for k, v in per_s.items()},
        "flops_per_step": flops,
        "achieved_flop_per_s": achieved,
        "gemm_peak_flop_per_s": peaks,
        "share_of_gemm_peak": {k: achieved[k] / peaks[k.split()[0]] for k in achieved},
    }


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

    cfg = compose(
        [
            f"data.root={root}",
            f"data.batch_size={batch}",
            f"model.width={width}",
            f"model.depth={depth}",
            f"trainer.max_steps={steps}",
            f"trainer.val_every={10 * steps}",
            "trainer.progress=false",
            f"trainer.device={device.type}",
            f"trainer.checkpoint_every={10 * steps}",
            "trainer.log_images=0",
            "trainer.precision=32",
        ]
    )
    train_set = build_datasets(dict(cfg.data)).train
    batches = [
        (x.to(device), y.to(device))
        for x, y in itertools.islice(DataLoader(train_set, batch_size=batch, shuffle=True), steps)
    ]

    def one_round() -> tuple[float, float]:
        model = bench_model("batch", train_set.in_channels, width, depth).to(device).train()
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
    return {
        "trainer_images_per_s": float(np.median(ours)),
        "bare_loop_images_per_s": float(np.median(theirs)),
        "ratio_trainer_over_bare": float(np.median(ratios)),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_per_round": ratios,
    }


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
    images, target = bench_inputs(batch, size, device)
    out = {}
    warnings.filterwarnings("ignore", message="norm=syncbatch outside")
    for norm in progress(sorted(NORMS), "norms", len(NORMS), "norm"):
        model = bench_model(norm, 4, width, depth).to(device)
        opt = torch.optim.Adam(model.parameters())
        step = lambda: train_step(model, images, target, MultilabelLoss("bce"), opt)  # noqa: E731, B023 - called in this iteration
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
        options = {
            "spade": {"hidden": 16},
            "group": {"num_groups": 4},
            "ws_group": {"num_groups": 4},
            "evonorm_s0": {"num_groups": 4},
        }.get(norm)
        model = ResUNet(4, 1, width=width, depth=depth, norm=norm, norm_options=options, dims=3).to(device)
        opt = torch.optim.Adam(model.parameters())
        step = lambda: train_step(model, images, target, MultilabelLoss("bce"), opt)  # noqa: E731, B023 - called in this iteration
        step()
        out[norm] = batch * math.prod(patch) * steps / timed(step, steps, device)
    return {
        "voxels_per_s": out,
        "relative_to_batch": {k: v / out["batch"] for k, v in out.items()},
        "patch": list(patch),
        "batch_size": batch,
        "model": f"resunet3d width={width} depth={depth}",
    }
