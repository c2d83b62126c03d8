"""Seconds per training step of the VOC-phantom FCN-8s per precision and memory format (REPORT 4c).

``segbench bench`` times the brain ResUNet; the FCN-8s studies (``experiment=fcn8s_*``) run a
different net (width 1/8, 21 classes, 128 x 128 crops padded by 100 inside the net), so their
choice of ``trainer.precision`` is timed here, on the same ``train_step`` the trainer runs, with
random images (speed only: nothing here looks at a val or test number). Settings alternate in
rounds inside one process, so a shared machine slows them alike; the ratios are the figures.

    python scripts/bench_fcn_precision.py                 # one thread, as the CPU studies run
    python scripts/bench_fcn_precision.py --device cuda   # the GPU variant
"""

from __future__ import annotations

import argparse
import sys

import torch

from segbench.bench.device import bench_device, describe, timed
from segbench.errors import SegbenchError
from segbench.models import build_model
from segbench.train.losses import SoftmaxCrossEntropy
from segbench.train.precision import precision_for
from segbench.train.step import train_step


def settings(device: torch.device) -> list[tuple[str, bool]]:
    # float32 channels-last is left out on the CPU: its backward crashes in this torch build.
    cpu = [("32", False), ("bf16-mixed", False), ("bf16-mixed", True)]
    return cpu if device.type == "cpu" else [(p, cl) for p in ("32", "bf16-mixed") for cl in (False, True)]


def step_seconds(norm: str, args, device: torch.device) -> dict[str, float]:
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    target = torch.randint(0, 21, (args.batch_size, args.size, args.size), device=device)
    loss_fn, steps = SoftmaxCrossEntropy(), {}
    for precision, channels_last in settings(device):
        torch.manual_seed(0)
        model = build_model("fcn8s", 3, 21, norm=norm, width=args.width, init="he").to(device)
        x = images
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = (lambda m, x, o, p: lambda: train_step(m, x, target, loss_fn, o, p))(  # noqa: B023 - called in this iteration
            model, x, optimizer, precision_for(precision, device)
        )
        step()  # warm-up
        steps[precision + (" channels_last" if channels_last else "")] = step
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for key, step in steps.items():
            seconds[key] += timed(step, args.steps, device)
    return {key: total / (args.rounds * args.steps) for key, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU studies run one per job)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        device = bench_device(args.device)
    except SegbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"FCN-8s width {args.width:g}, batch {args.batch_size}, {args.size} x {args.size}, {describe(device)}, "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    for norm in ("none", "batch"):
        seconds = step_seconds(norm, args, device)
        base = seconds["32"]
        cells = ", ".join(f"{key} {s:.3f} s ({base / s:.2f}x)" for key, s in seconds.items())
        print(f"norm={norm}: {cells}")


if __name__ == "__main__":
    main()
