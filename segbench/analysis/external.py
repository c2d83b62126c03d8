"""``segbench evaluate RUN --data-root DIR``: score a trained run on subjects it never saw.

The run's best-by-val checkpoint is applied, in eval mode and at the sigmoid threshold its own
val split chose, to every subject of another folder read the way the run read its data. Nothing
is trained or adapted and no label of that folder is used for any choice: the labels are only
compared with the predictions. Per subject: Dice, HD95, tumour volume and site; over subjects:
mean, median, worst and the share below 0.7 Dice, each with its 95 % interval.

Written to ``RUN/evaluations/<name>/``: ``evaluation.json`` (what ``segbench compare --evaluation
<name>`` reads, so several arms' runs evaluated on one folder are compared paired by seed, as
their test results are) and ``per_subject.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from segbench.errors import SegbenchError
from segbench.io import write_json, write_text

POOR_DICE = 0.7  # the share of subjects below this Dice: how many a reader would call failures
EVALUATIONS = "evaluations"
BOOTSTRAP_DRAWS = 10_000


def _name_for(data_root: str, name: str | None) -> str:
    chosen = name or Path(data_root).resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", chosen):
        raise SegbenchError(f"--name {chosen!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    return chosen


def _read_run(run: Path, checkpoint: str) -> tuple[dict, Path]:
    if not (run / "metrics.json").is_file():
        raise SegbenchError(f"{run} has no metrics.json; pass a finished run directory")
    path = run / "checkpoints" / checkpoint
    if not path.is_file():
        raise SegbenchError(f"{run} has no checkpoints/{checkpoint}; pass a finished run directory")
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except ValueError as err:
        raise SegbenchError(f"{run}/metrics.json cannot be read ({err})") from None
    return metrics, path


def chosen_threshold(metrics: dict, checkpoint: str) -> tuple[float, str]:
    """The sigmoid threshold the run's val chose for ``checkpoint``, and where it was read."""
    val = metrics.get("val", {}).get("best" if checkpoint == "best.pt" else "final", {})
    if "threshold_tuned" in val:
        return float(val["threshold_tuned"]), f"chosen on the run's val split ({checkpoint})"
    return 0.5, "0.5 (the run recorded no val-chosen threshold)"


def bootstrap_ci(values: np.ndarray, statistic, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``statistic`` over subjects (seeded: the same numbers each time)."""
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:
        value = float(statistic(values))
        return value, value
    res = bootstrap(
        (values,),
        statistic,
        n_resamples=BOOTSTRAP_DRAWS,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=False,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize_subjects(dice: np.ndarray) -> dict:
    """Mean, median, worst and share below ``POOR_DICE`` of per-subject Dice, with 95 % intervals."""
    from scipy.stats import binomtest

    poor = int((dice < POOR_DICE).sum())
    share = binomtest(poor, len(dice)).proportion_ci(0.95, method="wilson")
    return {
        "subjects": int(len(dice)),
        "mean": float(dice.mean()),
        "mean_ci": bootstrap_ci(dice, np.mean),
        "median": float(np.median(dice)),
        "median_ci": bootstrap_ci(dice, np.median),
        "worst": float(dice.min()),
        f"share_below_{POOR_DICE}": poor / len(dice),
        f"share_below_{POOR_DICE}_ci": (float(share.low), float(share.high)),
    }


def _rows(results: dict, dataset) -> list[dict]:
    sites = dict(zip(dataset.cases, dataset.sample_sites())) if hasattr(dataset, "sample_sites") else {}
    slices = Counter(dataset.cases)
    rows = []
    for case, values in results["per_case"].items():
        spacing = dataset.spacing[case] if isinstance(dataset.spacing, dict) else dataset.spacing
        voxel = float(np.prod(spacing))
        rows.append(
            {
                "subject": case,
                "site": sites.get(case, ""),
                "dice": values["dice"][0],
                "hd95": values.get("hd95", [float("nan")])[0],
                "tumor_volume": values["truth_voxels"][0] * voxel,
                "predicted_volume": values["predicted_voxels"][0] * voxel,
                "slices": slices.get(case),
            }
        )
    return rows


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def _external_dataset(cfg, data_root: str):
    """The run's reader on every subject of ``data_root``, with the run's preprocessing, no augmentation."""
    from segbench.data import DATASETS

    split_keys = ("split", "test_sites", "folds", "fold", "val_fraction", "test_fraction", "split_seed")
    loader_keys = ("name", "batch_size", "val_batch_size", "num_workers", "site_batches")
    opts = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k not in split_keys + loader_keys}
    opts.update(root=str(data_root), augment=False)
    if cfg.data.name not in DATASETS or cfg.data.name in ("voc", "brats3d"):
        raise SegbenchError(
            f"segbench evaluate scores runs on subjects with sigmoid masks (data=lgg, brats, "
            f"folder, brain_phantom); this run has data={cfg.data.name}"
        )
    try:
        dataset = DATASETS[cfg.data.name]("all", int(cfg.data.get("split_seed", 0)), **opts)
    except TypeError as err:
        raise SegbenchError(f"data={cfg.data.name}: {err}") from None
    if dataset.target_kind != "multilabel":
        raise SegbenchError(f"{data_root}: its masks are class ids; segbench evaluate scores sigmoid masks")
    return dataset


def _score(cfg, state: dict, path: Path, dataset, threshold: float) -> dict:
    """The checkpoint's results on ``dataset`` at ``threshold``, in eval mode; nothing is tuned."""
    from segbench.eval.evaluate import evaluate
    from segbench.ranks import DistContext
    from segbench.train.checkpoint import load_model_state
    from segbench.train.prepare import loss_from_config, model_from_config

    modalities = list(getattr(dataset, "modalities", []))
    model = model_from_config(cfg, dataset.in_channels, dataset.num_outputs, modalities, init=False)
    load_model_state(model, state, path)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    results, _ = evaluate(
        model.eval(), dataset, loss_from_config(cfg, dataset.target_kind), ctx,
        int(cfg.data.get("val_batch_size", 16)), threshold=threshold, tune=False,
        hd95=str(cfg.trainer.get("hd95", "monai")),
    )  # fmt: skip
    return results


def evaluate_external(
    run_dir: str, data_root: str, checkpoint: str = "best.pt", name: str | None = None, force: bool = False
) -> dict:
    """Score ``run_dir``'s checkpoint on every subject of ``data_root``; returns what evaluation.json holds."""
    from segbench.train.checkpoint import load_checkpoint

    run = Path(run_dir)
    metrics, path = _read_run(run, checkpoint)
    out = run / EVALUATIONS / _name_for(data_root, name)
    if (out / "evaluation.json").exists() and not force:
        raise SegbenchError(f"{out} already holds an evaluation; pass --force to write it again or --name another")
    state = load_checkpoint(path, ("model", "config"))
    cfg = OmegaConf.create(state["config"])
    dataset = _external_dataset(cfg, data_root)
    threshold, source = chosen_threshold(metrics, checkpoint)
    results = _score(cfg, state, path, dataset, threshold)
    rows = _rows(results, dataset)
    sites = sorted({r["site"] for r in rows if r["site"]})
    unit = getattr(dataset, "distance_unit", "mm")
    report = {
        "run": str(run),
        "checkpoint": checkpoint,
        "checkpoint_step": int(state.get("step", 0)),
        "data_root": str(Path(data_root).resolve()),
        "data": getattr(dataset, "summary", None),
        "threshold": threshold,
        "threshold_source": source,
        "labels_used_for_choices": "none: no training, no adaptation, threshold and checkpoint chosen on the run's val",
        "dice": summarize_subjects(np.array([r["dice"] for r in rows])),
        "by_site": {s: summarize_subjects(np.array([r["dice"] for r in rows if r["site"] == s])) for s in sites},
        "hd95_mean": float(np.nanmean([r["hd95"] for r in rows])),
        "hd95_unit": unit,
        "hd95_convention": str(cfg.trainer.get("hd95", "monai")),
        "volume_unit": "mm^3" if unit == "mm" else "pixels x slices",
        "seed": metrics.get("seed"),
        "norm": metrics.get("norm"),
        "results": results,  # per_case included: compare's population scope reads it
    }
    write_text(out / "per_subject.csv", _csv(rows))
    write_json(out / "evaluation.json", report)
    return {**report, "out": str(out)}


def format_report(report: dict) -> str:
    """The lines ``segbench evaluate`` prints."""
    d = report["dice"]
    share = f"share_below_{POOR_DICE}"
    lines = [
        f"{report['run']}: {report['checkpoint']} (step {report['checkpoint_step']}), threshold "
        f"{report['threshold']:.3f} {report['threshold_source']}",
        f"data: {report['data'] or report['data_root']}",
        f"per-subject Dice over {d['subjects']} subjects: mean {d['mean']:.3f} [{d['mean_ci'][0]:.3f}, "
        f"{d['mean_ci'][1]:.3f}], median {d['median']:.3f} [{d['median_ci'][0]:.3f}, {d['median_ci'][1]:.3f}], "
        f"worst {d['worst']:.3f}, below {POOR_DICE}: {d[share]:.0%} [{d[share + '_ci'][0]:.0%}, "
        f"{d[share + '_ci'][1]:.0%}] (95 % intervals: bootstrap over subjects; Wilson)",
        f"HD95 mean {report['hd95_mean']:.2f} ({report['hd95_unit']})",
    ]
    for site, s in report["by_site"].items():
        lines.append(
            f"  {site}: {s['subjects']} subjects, mean Dice {s['mean']:.3f}, median {s['median']:.3f}, "
            f"worst {s['worst']:.3f}"
        )
    lines.append(f"written: {report['out']}/evaluation.json, per_subject.csv")
    return "\n".join(lines)


def with_evaluation(runs: list, name: str) -> tuple[list, str]:
    """``runs`` with each one's test results replaced by its evaluation ``name`` (best checkpoint), and
    the folder they were scored on; one line when a run lacks it or the runs were scored on different
    subjects (a paired comparison needs the same subjects for every run)."""
    roots, subjects = set(), set()
    for run in runs:
        path = run.path / EVALUATIONS / name / "evaluation.json"
        if not path.is_file():
            raise SegbenchError(
                f"{run.path} has no evaluation {name!r} ({path} is missing); run "
                f"'segbench evaluate {run.path} --data-root <folder> --name {name}' first"
            )
        try:
            report = json.loads(path.read_text())
        except ValueError as err:
            raise SegbenchError(f"{path} cannot be read ({err})") from None
        roots.add(report["data_root"])
        subjects.add(tuple(sorted(report["results"].get("per_case", {}))))
        run.metrics = {**run.metrics, "test": {"best": report["results"]}}
    if len(subjects) > 1:
        raise SegbenchError(
            f"the runs' evaluations {name!r} scored different subjects ({len(roots)} folder(s): "
            f"{', '.join(sorted(roots))}); evaluate every run on the same folder"
        )
    return runs, next(iter(roots))
