"""``segbench adapt RUN_DIR``: test-time adaptation to the test split's scanners, without its labels.

For a run trained on some sites and tested on another (``data.test_sites``), each method sees the
test images but never their masks:

- ``none``: the checkpoint as trained (running statistics from the training sites).
- ``adabn`` (Li et al., 2016): every BN layer's statistics re-estimated on the test images, the
  exact average of ``batches`` batch statistics (precise BN on the target), weights untouched.
- ``tent`` (Wang et al., ICLR 2021), offline: the norms' affine weights (γ, β of every BN, GN, IN,
  LN ... layer; nothing else) moved by Adam to minimise the mean entropy of the predictions on the
  test images, with batch statistics as TENT does, for ``tent_steps`` batches; then the AdaBN
  statistics of the adapted weights, evaluated in eval mode. (TENT proper predicts each batch right
  after its update, online; the offline form scores every test subject with one model.)

Every method is scored at the sigmoid threshold the unadapted model chose on val: val is the
training sites' data, and the test labels choose nothing.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from segbench.data.site_batches import sample_sites
from segbench.errors import SegbenchError
from segbench.eval.evaluate import evaluate
from segbench.io import write_json
from segbench.nn.bn_stats import bn_layers, recompute_bn_stats
from segbench.ranks import DistContext

METHODS = ("none", "adabn", "tent", "site_bn")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


def prediction_entropy(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean entropy (nats) of the per-pixel predictions: binary per sigmoid channel, or of the softmax."""
    if kind == "multilabel":
        p = torch.sigmoid(logits)
        return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()


def affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scale and shift of every norm layer (what TENT adapts)."""
    found = []
    for module in model.modules():
        if isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower():
            found += [p for name, p in module.named_parameters(recurse=False) if name in ("weight", "bias")]
    return found


def adabn(model: nn.Module, images, device) -> int:
    """Re-estimate BN statistics on ``images`` (an iterable of batches); returns the batches used."""
    return recompute_bn_stats(model, images, device)


def tent(model: nn.Module, images, kind: str, device, lr: float = 1e-3) -> list[float]:
    """Minimise prediction entropy over ``images`` by the norms' affine weights only; the entropies seen."""
    params = affine_parameters(model)
    if not params:
        raise SegbenchError("--method tent: the model's norm layers have no affine weights to adapt (norm=none?)")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()  # batch statistics, as TENT; running statistics are re-estimated afterwards
    seen = []
    for batch in images:
        loss = prediction_entropy(model(batch.to(device)), kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return seen


def _summary(scores: dict, metric: str, extra: dict) -> dict:
    keep = {metric: scores[metric], "dice_at_0.5": scores.get("dice_at_0.5"), "ap": scores.get("ap")}
    return {**keep, "per_case": scores.get("per_case"), **extra}


def _check_methods(methods, cfg, model, test_set) -> list[str] | None:
    """One line when a method cannot run on this run; each test sample's site for ``site_bn``."""
    for method in ("adabn", "site_bn"):
        if method in methods and not bn_layers(model):
            raise SegbenchError(f"--methods {method}: norm={cfg.norm.name} keeps no running statistics to re-estimate")
    sites = sample_sites(test_set) if "site_bn" in methods else None
    if "site_bn" in methods and (not sites or not all(sites)):
        raise SegbenchError(
            "--methods site_bn needs every test subject's site: a sites.tsv (subject<TAB>site) in data.root"
        )
    return sites


def adapt(
    run_dir: str,
    methods=METHODS,
    batches: int = 20,
    tent_steps: int = 20,
    tent_lr: float = 1e-3,
    checkpoint: str = "best.pt",
) -> dict:
    """Score the run's test split after each adaptation method; writes ``adapt.json`` into the run."""
    from segbench.analysis.diagnose import load_run
    from segbench.eval.metrics import REPORT_METRIC

    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SegbenchError(f"--methods {','.join(methods)}: choose from {', '.join(METHODS)}")
    run = Path(run_dir)
    cfg, model, train_set, val_set, test_set, loss_fn, _ = load_run(run, checkpoint, "test")
    sites = _check_methods(methods, cfg, model, test_set)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    vbatch = int(cfg.data.get("val_batch_size", cfg.data.batch_size))
    threshold = float(
        evaluate(model, val_set, loss_fn, ctx, vbatch, hd95=False, tune=True)[0].get("threshold_tuned", 0.5)
    )
    kind, metric = train_set.target_kind, REPORT_METRIC[train_set.target_kind]

    def target_batches(n: int, images=test_set):
        loader = DataLoader(
            images, batch_size=int(cfg.data.batch_size), shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        return (x for x, _ in itertools.islice(itertools.cycle(loader), n))  # images only: no test label is read

    def per_site(adapted) -> dict:
        """Each test site's statistics from its own images, each site's subjects scored with them."""
        merged, cases, used = {}, 0, {}
        for site in sorted(set(sites)):
            subset = Subset(test_set, [i for i, s in enumerate(sites) if s == site])
            site_model = copy.deepcopy(adapted)
            used[site] = adabn(site_model, target_batches(batches, subset), ctx.device)
            scores = evaluate(
                site_model.eval(), subset, loss_fn, ctx, vbatch, threshold=threshold, hd95=False, tune=False
            )[0]
            for key in (metric, "dice_at_0.5"):  # per-case means: weighted by cases, they pool exactly
                merged[key] = merged.get(key, 0.0) + scores[key] * scores["cases"]
            cases += scores["cases"]
            merged.setdefault("per_case", {}).update(scores["per_case"])
            merged["ap"] = scores["ap"] if len(used) == 1 else None
        return {
            **{k: v / cases for k, v in merged.items() if k in (metric, "dice_at_0.5")},
            "ap": merged["ap"],
            "per_case": merged["per_case"],
            "bn_batches_per_site": used,
        }

    results = {}
    for method in methods:
        adapted = copy.deepcopy(model)
        extra = {}
        if method == "tent":
            extra["entropy"] = tent(adapted, target_batches(tent_steps), kind, ctx.device, tent_lr)
        if method in ("adabn", "tent") and bn_layers(adapted):
            extra["bn_batches"] = adabn(adapted, target_batches(batches), ctx.device)
        if method == "site_bn":
            results[method] = per_site(adapted)
            continue
        scores = evaluate(adapted.eval(), test_set, loss_fn, ctx, vbatch, threshold=threshold, hd95=False, tune=False)
        results[method] = _summary(scores[0], metric, extra)
    out = {
        "metric": metric,
        "threshold_from_val": threshold,
        "checkpoint": checkpoint,
        "test_sites": OmegaConf.to_container(cfg.data).get("test_sites"),
        "site_batches": bool(cfg.data.get("site_batches")),
        "methods": results,
    }
    write_json(run / "adapt.json", out)
    return out
