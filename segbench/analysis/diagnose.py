"""``segbench diagnose RUN_DIR``: what batch norm did in a finished run, measured and put in words.

Evaluates the checkpoint four ways: (a) running statistics (eval mode, what deployment uses),
(b) each batch's own statistics at the eval batch and (c) at batch 1 (a TF1 graph left at
``is_training=True``), (d) precise-BN statistics recomputed over K training batches with the
weights frozen. From those scores and the statistics' own state (still exactly (0, 1)? how much
of that the momentum leaves after the run's steps?) it names one cause: ``never_updated``,
``too_slow``, ``stale``, ``batch_stats_at_eval``, ``healthy`` or ``unclear``, and says when a
small batch may be involved that one run cannot show.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from segbench.errors import SegbenchError
from segbench.eval.evaluate import evaluate
from segbench.eval.metrics import MAIN_METRIC, REPORT_METRIC
from segbench.io import write_json, write_text
from segbench.nn.bn_stats import batch_statistics, bn_layers, recompute_bn_stats, running_statistics
from segbench.ranks import DistContext


def load_run(run_dir: Path, checkpoint: str, split: str = "val"):
    """A finished run's config, model at ``checkpoint``, datasets (test only for ``split="test"``), loss and step."""
    from segbench.data import build_datasets
    from segbench.train.checkpoint import load_checkpoint, load_model_state
    from segbench.train.prepare import loss_from_config, model_from_config

    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file():
        raise SegbenchError(f"{run_dir} has no checkpoints/{checkpoint}; pass a finished run directory")
    state = load_checkpoint(path, ("model", "config"))
    cfg = OmegaConf.create(state["config"])
    splits = build_datasets(OmegaConf.to_container(cfg.data))
    if split == "test" and splits.test is None:
        raise SegbenchError(f"{run_dir}: its data has no test split (data.test_fraction=0); use --split val")
    train_set = splits.train
    model = model_from_config(
        cfg, train_set.in_channels, train_set.num_outputs, list(getattr(train_set, "modalities", []))
    )
    load_model_state(model, state, path)
    return (
        cfg,
        model.eval(),
        train_set,
        splits.val,
        splits.test if split == "test" else None,
        loss_from_config(cfg, train_set.target_kind),
        int(state.get("step", 0)),
    )


def layer_divergence(model, reference) -> list[dict]:
    """Per BN layer: mean |mu_run - mu_ref| / sigma_ref and mean |log(var_run / var_ref)| over channels."""
    rows = []
    for (name, run), (_, ref) in zip(bn_layers(model), bn_layers(reference)):
        sigma = torch.sqrt(ref.running_var + ref.eps)
        rows.append(
            {
                "layer": name,
                "mean_shift": float(((run.running_mean - ref.running_mean).abs() / sigma).mean()),
                "log_var_ratio": float(
                    (torch.log((run.running_var + run.eps) / (ref.running_var + ref.eps))).abs().mean()
                ),
            }
        )
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


def statistics_state(model, steps: int) -> dict:
    """What the running statistics have been through: never moved from (0, 1)? How much of that
    initial state the update rate leaves after ``steps`` updates ((1 - momentum) ^ steps)."""
    layers = [m for _, m in bn_layers(model)]
    never = all(bool(torch.all(m.running_mean == 0)) and bool(torch.all(m.running_var == 1)) for m in layers)
    momentum = layers[0].momentum if layers else None
    left = 0.0 if momentum is None else float((1 - float(momentum)) ** max(steps, 0))
    return {
        "never_updated": never,
        "momentum": momentum,
        "steps": steps,
        "initial_share_left": left,
        "updates_run": all(getattr(m, "update_stats", True) for m in layers),
        "eval_stats": sorted({getattr(m, "eval_stats", "running") for m in layers}),
    }


# Eval metric lost to the running statistics before a cause is named: CLOSE (within it, two ways
# of evaluating agree) when the statistics' own state points at the cause (exactly (0, 1), or most
# of it left by a slow momentum), GAP when only the scores do.
GAP = 0.05
CLOSE = 0.02


def _side_notes(cause: str, evaluates_with_batch: bool, state: dict, scores: dict, flips: float, batch_size: int):
    """Evidence beside the cause: untouched statistics that do not hurt, small batches, batch dependence."""
    running, precise, batch = scores["running"], scores["precise"], scores["batch"]
    lines = []
    if not evaluates_with_batch and state["never_updated"] and cause != "never_updated":
        lines.append("the running statistics were never updated (still (0, 1)), but eval does not suffer from it here")
    if batch_size <= 2:
        lines.append(
            f"trained at batch {batch_size}: BN's batch statistics are noisy there; one run cannot show "
            "whether that hurt — compare with group norm at this batch (experiment=norm_vs_batch_size)"
        )
    if not evaluates_with_batch and batch - max(running, precise) > GAP:
        lines.append(
            f"the net relies on batch statistics: {batch:.2f} with them vs {max(running, precise):.2f} "
            f"with fixed ones; BN at this batch size trains a net that eval mode cannot reproduce"
        )
    if flips == flips and flips > 0.01:
        lines.append(
            f"predictions depend on batch-mates: {100 * flips:.1f}% of an image's pixels change class when "
            f"its batch-mates change; a batch-independent norm (group, instance, layer) avoids this"
        )
    return lines


def name_cause(
    metric: str, scores: dict, state: dict, flips: float, layers: list[dict], batch_size: int
) -> tuple[str, list[str]]:
    """The cause in one word and the evidence in lines, from the measured scores and the statistics' state.

    ``scores``: the split's metric with running statistics, batch statistics at the eval batch and at
    batch 1, and precise-BN statistics; each at a threshold chosen on val *in that mode*.
    """
    running, precise = scores["running"], scores["precise"]
    batch, batch1 = scores["batch"], scores["batch_1"]
    shift = sum(r["mean_shift"] for r in layers) / max(len(layers), 1)
    lines, cause = [], "healthy"
    evaluates_with_batch = state["eval_stats"] == ["batch"]
    gap = precise - running
    if evaluates_with_batch:
        # A graph left at is_training=True: its results are batch statistics, the running ones never used.
        own = min(batch, batch1)
        if max(running, precise) - own > GAP:
            cause = "batch_stats_at_eval"
            lines.append(
                f"this run evaluates with batch statistics (is_training left true at test): {metric} "
                f"{batch:.2f} at the eval batch and {batch1:.2f} at batch 1, against {precise:.2f} with "
                f"recomputed statistics; evaluate in eval mode (model.eval(), is_training=False)"
            )
        else:
            lines.append(
                f"this run evaluates with batch statistics, which cost little here ({batch:.2f} at the eval "
                f"batch, {batch1:.2f} at batch 1, {precise:.2f} recomputed)"
            )
    elif gap > CLOSE and state["never_updated"]:
        cause = "never_updated"
        lines.append(
            f"running statistics were never updated: every BN layer still holds its initial (0, 1) "
            f"(TF1: the UPDATE_OPS were never run, e.g. optimizer.minimize without a control dependency on "
            f"tf.GraphKeys.UPDATE_OPS; here momentum={state['momentum']}, update_stats="
            f"{state['updates_run']}); eval {metric} {running:.2f} vs {precise:.2f} with recomputed statistics"
        )
    elif gap > CLOSE and state["initial_share_left"] > 0.05:
        cause = "too_slow"
        lines.append(
            f"running statistics update too slowly for this run: momentum {state['momentum']:g} over "
            f"{state['steps']} steps leaves {100 * state['initial_share_left']:.0f}% of the initial (0, 1) in them "
            f"(TF1's decay 0.999 is momentum 0.001); eval {metric} {running:.2f} vs {precise:.2f} recomputed. "
            f"The updates ran; lower the decay (0.9-0.99, PyTorch's 0.1) or recompute them (precise BN)"
        )
    elif gap > GAP:
        cause = "stale"
        lines.append(
            f"running statistics are stale: eval {metric} {running:.2f} vs {precise:.2f} with recomputed "
            f"statistics ({shift:.2f} sigma mean shift per layer), though they were updated at momentum "
            f"{state['momentum']}; recompute them after training (trainer.precise_bn_batches)"
        )
    elif abs(gap) <= CLOSE and abs(batch - running) <= GAP:
        lines.append(
            f"BN is fine here: running, batch and recomputed statistics agree (eval {metric} {running:.2f}, "
            f"batch {batch:.2f}, precise {precise:.2f})"
        )
    else:
        cause = "unclear"
        lines.append(
            f"no single cause: running {running:.2f}, batch {batch:.2f}, batch 1 {batch1:.2f}, recomputed "
            f"{precise:.2f}; the gaps are between {CLOSE} and {GAP} and the statistics' state points at "
            "nothing, where this check cannot tell causes apart"
        )
    lines += _side_notes(cause, evaluates_with_batch, state, scores, flips, batch_size)
    return cause, lines


def _render(run, checkpoint, cfg, step, split, metric, scores, vbatch, used, state, flips, layers, cause, verdict):
    """diagnose.md: the cause, the four scores, the statistics' state, the furthest layers, the evidence."""
    worst = sorted(layers, key=lambda r: -r["mean_shift"])[:5]
    text = "\n".join(
        [
            f"# BN diagnosis of {run} ({checkpoint}, norm={cfg.norm.name}, batch {cfg.data.batch_size}, step {step})",
            "",
            f"cause: {cause}",
            "",
            f"{split} {metric}{' (each at the threshold it chose on val)' if split == 'test' else ''}: "
            f"running statistics {scores['running']:.4f} | batch statistics {scores['batch']:.4f} (batch {vbatch}), "
            f"{scores['batch_1']:.4f} (batch 1) | precise BN over {used} batches {scores['precise']:.4f}",
            f"statistics: never updated {state['never_updated']}; momentum {state['momentum']}; "
            f"initial (0, 1) left after {step} steps {100 * state['initial_share_left']:.1f}%",
            f"batch-mate dependence: {100 * flips:.2f}% of pixels change",
            "",
            "layers whose running statistics are furthest from recomputed ones "
            "(mean shift in sigmas, |log var ratio|):",
            *[f"  {r['layer']}: {r['mean_shift']:.3f}, {r['log_var_ratio']:.3f}" for r in worst],
            "",
            *[f"- {line}" for line in verdict],
        ]
    )
    return text


def diagnose(run_dir: str, batches: int = 20, checkpoint: str = "last.pt", split: str = "val") -> str:
    """Score ``split`` (val or test) four ways, name the cause, write diagnose.json/.md into the run, return the text.

    On test, each way of evaluating gets the sigmoid threshold it chooses on val itself, so no way is
    scored at a threshold tuned for another (recomputed statistics at the running model's threshold
    would understate them).
    """
    run = Path(run_dir)
    if split not in ("val", "test"):
        raise SegbenchError(f"split={split!r} is not valid; choose one of: test, val")
    cfg, model, train_set, val_set, test_set, loss_fn, step = load_run(run, checkpoint, split)
    if not bn_layers(model):
        return f"{run}: norm={cfg.norm.name} has no batch-norm layers with running statistics; nothing to diagnose"
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    vbatch = int(cfg.data.get("val_batch_size", cfg.data.batch_size))
    # On val the selection metric; on test the reported one, at the threshold chosen on val.
    metric = (MAIN_METRIC if split == "val" else REPORT_METRIC)[train_set.target_kind]

    def score(m, eval_batch: int) -> float:
        tuned = evaluate(m, val_set, loss_fn, ctx, eval_batch, hd95=False, tune=True)[0]
        if test_set is None:
            return tuned[metric]
        threshold = float(tuned.get("threshold_tuned", 0.5))
        return evaluate(m, test_set, loss_fn, ctx, eval_batch, threshold=threshold, hd95=False, tune=False)[0][metric]

    state = statistics_state(model, step)
    scores = {}
    # "running" must mean the running statistics even when the run evaluated with batch ones.
    with running_statistics(model):
        scores["running"] = score(model, vbatch)
    with batch_statistics(model):
        scores["batch"] = score(model, vbatch)
        scores["batch_1"] = score(model, 1)
    precise_model = copy.deepcopy(model)
    loader = DataLoader(
        train_set, batch_size=int(cfg.data.batch_size), shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    used = recompute_bn_stats(precise_model, (x for x, _ in itertools.islice(loader, batches)), ctx.device)
    with running_statistics(precise_model.eval()):
        scores["precise"] = score(precise_model, vbatch)
    layers = layer_divergence(model, precise_model)
    flips = batchmate_dependence(model, val_set, max(2, int(cfg.data.batch_size)))
    cause, verdict = name_cause(metric, scores, state, flips, layers, int(cfg.data.batch_size))
    result = {
        "metric": metric,
        "split": split,
        "checkpoint": checkpoint,
        **scores,
        "precise_batches": used,
        "cause": cause,
        "statistics": state,
        "gap_precise_minus_running": scores["precise"] - scores["running"],
        "gap_batch_minus_running": scores["batch"] - scores["running"],
        "batchmate_flip_fraction": flips,
        "layers": layers,
        "verdict": verdict,
    }
    write_json(run / "diagnose.json", result)
    text = _render(
        run, checkpoint, cfg, step, split, metric, scores, vbatch, used, state, flips, layers, cause, verdict
    )
    write_text(run / "diagnose.md", text + "\n")
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        metrics["diagnose"] = {k: result[k] for k in ("running", "batch", "batch_1", "precise", "cause", "split")}
        write_json(metrics_path, metrics)
    return text
