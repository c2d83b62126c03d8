"""How much packing can buy on this device: one member's forward and backward against K members'
in one vmapped call (the packed launcher's own ``PackedSteps`` code), on one thread, with achieved
FLOP/s as a share of a one-thread GEMM peak measured beside them.

Why it is in the bench: today's way trains two one-thread processes on two cores. A packed process
can beat it only by doing the same arithmetic faster per core, so the one-member step's share of
the GEMM peak bounds what any packing can gain on the training part: at 40 % of the peak, even a
perfect packed step is at most 2.5x, before evaluation and start-up (which packing does not
shrink) are counted. On a GPU the picture differs: small convolutions leave it idle, and K members
in one call fill it.
"""

from __future__ import annotations

import torch

from segbench.bench.device import gemm_peak, step_flops, timed
from segbench.train.losses import MultilabelLoss
from segbench.train.packed import PackedSteps


def packing_ceiling(
    packs: list[int],
    device: torch.device,
    width: int = 8,
    depth: int = 4,
    batch: int = 4,
    size=(96, 112),
    steps: int = 3,
    rounds: int = 3,
) -> dict:
    """Member-steps per second and FLOP/s shares, one member vs vmapped packs of each K in ``packs``,
    rounds interleaved (a shared machine slows every way alike). The shipped 2-D study's network and
    batch by default (ResUNet width 8, depth 4, BN, batch 4, 96 x 112, float32)."""
    # The bench's own model and inputs, the same as its other tables.
    from segbench.bench.training import bench_inputs, bench_model

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # per core: what two one-thread processes each get
    try:
        loss_fn = MultilabelLoss("bce")
        images, target = bench_inputs(batch, size, device)
        one = bench_model("batch", 4, width, depth).to(device)
        alone = lambda: PackedSteps._alone(one, images, target, loss_fn, None)  # noqa: E731
        flops = step_flops(alone)  # forward and backward of one member; the optimizer step is left out
        ways = {"one member": (alone, 1)}
        for k in packs:
            members = [
                (bench_model("batch", 4, width, depth).to(device), images, target, loss_fn, None, None)
                for _ in range(k)
            ]
            packed = PackedSteps(k, vectorize=True)
            ways[f"K={k} vmapped"] = ((lambda p, m: lambda: p._packed_grads(m))(packed, members), k)
        for fn, _ in ways.values():
            fn()  # warm-up
        seconds = dict.fromkeys(ways, 0.0)
        for _ in range(rounds):
            for name, (fn, _) in ways.items():
                seconds[name] += timed(fn, steps, device)
        peak = gemm_peak(device, torch.float32)
    finally:
        torch.set_num_threads(threads)
    member_steps = {name: k * steps * rounds / seconds[name] for name, (_, k) in ways.items()}
    share = {name: flops * per_s / peak for name, per_s in member_steps.items()}
    return {
        "model": f"resunet width={width} depth={depth} batch={batch} {size[0]}x{size[1]} float32",
        "threads": 1 if device.type == "cpu" else threads,
        "flops_per_member_step": flops,
        "gemm_peak_flop_per_s": peak,
        "member_steps_per_s": member_steps,
        "relative_to_one_member": {n: v / member_steps["one member"] for n, v in member_steps.items()},
        "share_of_gemm_peak": share,
        "ceiling_over_separate_runs": 1 / share["one member"],
    }


def lines(report: dict | None) -> list[str]:
    if not report:
        return []
    r = report
    ways = "; ".join(
        f"{name} {per_s:.1f} member-steps/s ({r['relative_to_one_member'][name]:.2f}x, "
        f"{r['share_of_gemm_peak'][name]:.0%} of the GEMM peak)"
        for name, per_s in r["member_steps_per_s"].items()
    )
    return [
        f"packing's ceiling ({r['model']}, forward+backward, {r['threads']} thread): {ways}; "
        f"GEMM peak {r['gemm_peak_flop_per_s'] / 1e9:.0f} GFLOP/s, so no packing can train more than "
        f"{r['ceiling_over_separate_runs']:.1f}x the member-steps of separate runs per core"
    ]
