"""``segbench diagnose RUN_DIR``: what batch norm did in a finished run, measured and put in words.

Evaluates the checkpoint on the validation split three ways: (a) running statistics (eval mode,
what deployment uses), (b) each batch's own statistics, (c) precise-BN statistics recomputed over
K training batches with the weights frozen. It also measures how far each layer's running
statistics are from the recomputed ones, and whether an image's prediction changes with its
batch-mates when BN uses batch statistics.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from segbench.nn.bn_stats import batch_statistics, bn_layers, recompute_bn_stats, running_statistics
from segbench.errors import SegbenchError
from segbench.io import write_json, write_text
from segbench.train.distributed import DistContext
from segbench.train.evaluate import evaluate
from segbench.train.metrics import MAIN_METRIC, REPORT_METRIC


def _load(run_dir: Path, checkpoint: str, split: str = "val"):
    from segbench.data import build_datasets
    from segbench.train.checkpoint import load_checkpoint, load_model_state
    from segbench.train.prepare import loss_from_config, model_from_config

    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file():
        raise SegbenchError(f"{run_dir} has no checkpoints/{checkpoint}; pass a finished run directory")
    state = load_checkpoint(path, ("model", "config"))
    cfg = OmegaConf.create(state["config"])
    splits = build_datasets(OmegaConf.to_container(cfg.data))
    train_set, val_set = splits.train, splits.test if split == "test" else splits.val
    if val_set is None:
        raise SegbenchError(f"{run_dir}: its data has no test split (data.test_fraction=0); use --split val")
    model = model_from_config(cfg, train_set.in_channels, train_set.num_outputs, list(getattr(train_set, "modalities", [])))
    load_model_state(model, state, path)
    # The sigmoid threshold this checkpoint's own validation chose: test is scored at it, never tuned on.
    chosen = state["best"] if checkpoint == "best.pt" else state.get("last_val", {})
    threshold = float(chosen.get("threshold_tuned", 0.5))
    return cfg, model.eval(), train_set, val_set, loss_from_config(cfg, train_set.target_kind), threshold


def layer_divergence(model, reference) -> list[dict]:
    """Per BN layer: mean |mu_run - mu_ref| / sigma_ref and mean |log(var_run / var_ref)| over channels."""
    rows = []
    for (name, run), (_, ref) in zip(bn_layers(model), bn_layers(reference)):
        sigma = torch.sqrt(ref.running_var + ref.eps)
        rows.append({"layer": name,
                     "mean_shift": float(((run.running_mean - ref.running_mean).abs() / sigma).mean()),
                     "log_var_ratio": float((torch.log((run.running_var + run.eps) / (ref.running_var + ref.eps))).abs().mean())})
    return rows


@torch.no_grad()
def batchmate_dependence(model, val_set, batch: int) -> float:
    """Share of one image's pixels whose prediction flips when its batch-mates change (batch statistics)."""
    if len(val_set) < 2 * batch:
        return float("nan")
    image = val_set[0][0][None]
    mates_a = torch.stack([val_set[i][0] for i in range(1, batch)])
    mates_b = torch.stack([val_set[i][0] for i in range(len(val_set) - batch + 1, len(val_set))])
    with batch_statistics(model):
        out_a = model(torch.cat([image, mates_a]))[0]
        out_b = model(torch.cat([image, mates_b]))[0]
    pred = (lambda o: o.argmax(0)) if val_set.target_kind == "multiclass" else (lambda o: o > 0)
    return float((pred(out_a) != pred(out_b)).float().mean())


def explain(metric: str, running: float, batch: float, precise: float, flips: float, layers: list[dict]) -> list[str]:
    """The numbers in words.

    "Stale" needs the measured gap: eval with running statistics must score worse than with
    recomputed ones. A statistics shift alone is reported as a shift, not as the cause.
    """
    lines = []
    shift = sum(r["mean_shift"] for r in layers) / max(len(layers), 1)
    log_var = sum(r["log_var_ratio"] for r in layers) / max(len(layers), 1)
    if precise - running > 0.05:
        lines.append(f"running statistics are stale: eval {metric} {running:.2f} vs {precise:.2f} with recomputed "
                     f"statistics, which differ by {shift:.2f} sigma in mean and {log_var:.2f} in log variance per "
                     f"layer on average; recompute them (trainer.precise_bn_batches) or check that BN updates run "
                     f"(momentum > 0, update ops executed)")
    elif abs(precise - running) <= 0.02 and abs(batch - running) <= 0.05:
        lines.append(f"healthy: running, batch and recomputed statistics agree (eval {metric} {running:.2f}, "
                     f"batch {batch:.2f}, precise {precise:.2f})")
    elif shift > 0.5 or log_var > 0.5:
        lines.append(f"running statistics differ from recomputed ones ({shift:.2f} sigma in mean, {log_var:.2f} in "
                     f"log variance per layer) but eval {metric} does not suffer ({running:.2f} vs {precise:.2f} "
                     f"recomputed): not the cause of a bad result here")
    else:
        lines.append(f"running statistics are close to recomputed ones ({running:.2f} vs {precise:.2f})")
    if batch - max(running, precise) > 0.05:
        lines.append(f"the net relies on batch statistics: {batch:.2f} with them vs {max(running, precise):.2f} "
                     f"with fixed ones; BN at this batch size trains a net that eval mode cannot reproduce")
    if flips == flips and flips > 0.01:
        lines.append(f"predictions depend on batch-mates: {100 * flips:.1f}% of an image's pixels change class when "
                     f"its batch-mates change; a batch-independent norm (group, instance, layer) avoids this")
    return lines


def diagnose(run_dir: str, batches: int = 20, checkpoint: str = "last.pt", split: str = "val") -> str:
    """Run the three evaluations on ``split`` (val or test), write diagnose.json/.md into the run, return the text."""
    run = Path(run_dir)
    if split not in ("val", "test"):
        raise SegbenchError(f"split={split!r} is not valid; choose one of: test, val")
    cfg, model, train_set, val_set, loss_fn, threshold = _load(run, checkpoint, split)
    if not bn_layers(model):
        return f"{run}: norm={cfg.norm.name} has no batch-norm layers with running statistics; nothing to diagnose"
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    vbatch = int(cfg.data.get("val_batch_size", cfg.data.batch_size))
    # On val the selection metric; on test the reported one, at the threshold chosen on val.
    metric = (MAIN_METRIC if split == "val" else REPORT_METRIC)[train_set.target_kind]

    def score(m) -> float:
        return evaluate(m, val_set, loss_fn, ctx, vbatch, threshold=threshold, hd95=False,
                        tune=split == "val")[0][metric]

    # "running" must mean the running statistics even when the run evaluated with batch ones.
    with running_statistics(model):
        running = score(model)
    with batch_statistics(model):
        batch = score(model)
    precise_model = copy.deepcopy(model)
    loader = DataLoader(train_set, batch_size=int(cfg.data.batch_size), shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    used = recompute_bn_stats(precise_model, (x for x, _ in itertools.islice(loader, batches)), ctx.device)
    with running_statistics(precise_model.eval()):
        precise = score(precise_model)
    layers = layer_divergence(model, precise_model)
    flips = batchmate_dependence(model, val_set, max(2, int(cfg.data.batch_size)))
    result = {"metric": metric, "split": split, "running": running, "batch": batch, "precise": precise, "precise_batches": used,
              "gap_precise_minus_running": precise - running, "gap_batch_minus_running": batch - running,
              "batchmate_flip_fraction": flips, "layers": layers, "verdict": explain(metric, running, batch, precise, flips, layers)}
    write_json(run / "diagnose.json", result)
    worst = sorted(layers, key=lambda r: -r["mean_shift"])[:5]
    text = "\n".join([
        f"# BN diagnosis of {run} ({checkpoint}, norm={cfg.norm.name}, batch {cfg.data.batch_size})", "",
        f"{split} {metric}: running statistics {running:.4f} | batch statistics {batch:.4f} | "
        f"precise BN over {used} batches {precise:.4f}",
        f"gaps: precise - running {precise - running:+.4f}; batch - running {batch - running:+.4f}",
        f"batch-mate dependence: {100 * flips:.2f}% of pixels change", "",
        "layers whose running statistics are furthest from recomputed ones (mean shift in sigmas, |log var ratio|):",
        *[f"  {r['layer']}: {r['mean_shift']:.3f}, {r['log_var_ratio']:.3f}" for r in worst], "",
        *[f"- {line}" for line in result["verdict"]]])
    write_text(run / "diagnose.md", text + "\n")
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        metrics["diagnose"] = {k: result[k] for k in ("running", "batch", "precise")}
        write_json(metrics_path, metrics)
    return text
