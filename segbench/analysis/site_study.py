"""The planned contrasts of the scanner-shift study (``experiment=site_shift``, REPORT section 9).

Every run trains on all sites but one and is tested on that held-out site. The unit of pairing
is (seed, held-out site): the arms of one unit share the data split, the data order and the
initial weights, so a difference within a unit is the norm's (or the adaptation's) alone. The
question, declared before the runs were read: does anything beat plain BN on a scanner it never
saw? One family of contrasts, each against BN with its training statistics, plus per-site BN
against AdaBN (does training on one-site batches add anything to re-estimating the statistics?),
Holm over the family, TOST at the margin of the experiment file, and each contrast judged only
where every arm it reads converged.

Scope, said in every table: these held-out sites and their test subjects (seeds random, sites
and subjects fixed). With three sites a site's own random effect cannot be estimated, so the
intervals do not cover a new scanner population.

    segbench report site-shift <sweep> ... --out out
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.arms import result
from segbench.analysis.decide import Design, decide_family, declared_design, family_level, render
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.verdicts import contrast_converged, run_convergence

NAMES = {"batch": "BN", "instance": "IN", "group": "GN", "layer": "LN", "frn": "FRN", "none": "no norm"}
METHOD_NAMES = {"none": "", "adabn": " + AdaBN", "tent": " + TENT", "site_bn": " + per-site statistics"}
BASELINE = "BN"
PER_SITE = "BN, one-site batches + per-site statistics"  # per-site BN, both halves
# (arm, against, claimed direction, what it asks)
CONTRASTS = (
    ("IN", BASELINE, +1, "instance norm beats BN on an unseen site"),
    ("GN", BASELINE, +1, "group norm beats BN on an unseen site"),
    ("LN", BASELINE, +1, "layer norm beats BN on an unseen site"),
    ("FRN", BASELINE, +1, "FRN beats BN on an unseen site"),
    ("no norm", BASELINE, +1, "no normalization beats BN on an unseen site"),
    ("BN + AdaBN", BASELINE, +1, "AdaBN (test-site statistics) rescues BN"),
    ("BN + TENT", BASELINE, +1, "TENT (entropy minimisation) rescues BN"),
    (PER_SITE, BASELINE, +1, "per-site BN rescues BN"),
    (PER_SITE, "BN + AdaBN", +1, "one-site training batches add to AdaBN"),
)


def held_out_site(run: Run) -> str:
    sites = ((run.config.get("data") or {}).get("test_sites")) or []
    return ",".join(map(str, sites)) or "(subjects split across sites)"


def _arm_name(run: Run, method: str) -> str:
    norm = str(run.metrics["norm"])
    name = NAMES.get(norm, norm)
    if (run.config.get("data") or {}).get("site_batches"):
        return PER_SITE if method == "site_bn" else f"{name}, one-site batches{METHOD_NAMES[method]}"
    return name + METHOD_NAMES[method]


def _scores(run: Run, metric: str) -> dict[str, float | None]:
    """Test ``metric`` per method: the run's own (``none``) and each in its ``adapt.json``."""
    scores = {"none": result(run, metric)}
    adapted = run.path / "adapt.json"
    if adapted.exists():
        for method, numbers in json.loads(adapted.read_text())["methods"].items():
            if method != "none":
                scores[method] = numbers.get(metric)
    return scores


def arms(runs: list[Run], metric: str) -> tuple[dict[str, dict[tuple, float]], dict[str, list[Run]]]:
    """``{arm: {(seed, held-out site): value}}`` and the training runs behind each arm."""
    values: dict[str, dict[tuple, float]] = defaultdict(dict)
    trained: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        unit = (int(run.metrics["seed"]), held_out_site(run))
        for method, value in _scores(run, metric).items():
            name = _arm_name(run, method)
            values[name][unit] = value
            trained[name].append(run)
    return values, trained


def contrasts(sweeps: list[str], metric: str = "dice", design: Design | None = None, looks: int = 1) -> dict:
    """Each planned contrast's per-unit differences, interval, Holm-adjusted verdict and convergence;
    ``looks``: the looks the study planned before its runs, each judged at alpha / looks."""
    runs = find_runs(list(sweeps))
    design = design or declared_design(runs, looks)
    values, trained = arms(runs, metric)
    rows = []
    for arm, against, direction, asks in CONTRASTS:
        if arm not in values or against not in values:
            continue
        units = sorted(
            u
            for u in set(values[arm]) & set(values[against])
            if values[arm][u] is not None and values[against][u] is not None
        )
        converged = contrast_converged(trained[arm], trained[against])
        diffs = [values[arm][u] - values[against][u] for u in units]
        _, low, high = stats.mean_ci(diffs)
        rows.append(
            {
                "label": f"{arm} − {against}",
                "asks": asks,
                "direction": direction,
                "units": units,
                "diffs": diffs,
                "low": low,
                "high": high,
                "converged": converged,
            }
        )
    for row, verdict in zip(
        rows,
        decide_family(
            [r["diffs"] for r in rows], design, [r["direction"] for r in rows], [r["converged"] for r in rows]
        ),
    ):
        converged = row["converged"]
        row.update(verdict)
        # Here a pair is a (seed, held-out site) unit, not a seed.
        row["verdict"] = render(row, converged, unit="unit")
    sites = sorted({site for by in values.values() for _, site in by})
    per_arm = {}
    for name, by in sorted(values.items()):
        got = [v for v in by.values() if v is not None]
        per_site = {
            s: float(np.mean([v for (_, site), v in by.items() if site == s and v is not None] or [np.nan]))
            for s in sites
        }
        per_arm[name] = {
            "units": len(got),
            "mean": float(np.mean(got)) if got else float("nan"),
            "per_site": per_site,
            "converged": sum(run_convergence(r).get("converged") is True for r in trained[name]),
            "runs": len(trained[name]),
        }
    return {
        "rows": rows,
        "arms": per_arm,
        "sites": sites,
        "metric": metric,
        "margin": design.margin,
        "level": family_level(design),
        "runs": len(runs),
    }


def markdown(numbers: dict) -> str:
    sites = numbers["sites"]
    lines = [
        f"{numbers['runs']} training runs; test {numbers['metric']} on the held-out site, checkpoint and "
        f"threshold chosen on val (training sites); margin ±{numbers['margin']:g} declared in the experiment "
        f"file; Holm over the {len(numbers['rows'])} contrasts{numbers['level']}; scope: these held-out sites and "
        "their test subjects, paired by (seed, held-out site).",
        "",
        "| arm | units | mean | " + " | ".join(f"held-out {s}" for s in sites) + " | converged |",
        "|---|---|---|" + "---|" * len(sites) + "---|",
    ]
    for name, a in numbers["arms"].items():
        lines.append(
            f"| {name} | {a['units']} | {a['mean']:.3f} | "
            + " | ".join(f"{a['per_site'][s]:.3f}" for s in sites)
            + f" | {a['converged']}/{a['runs']} |"
        )
    lines += [
        "",
        "| contrast | what it asks | mean [95 % CI] | units in the claimed direction | Holm p | "
        "TOST Holm p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in numbers["rows"]:
        d = np.asarray(r["diffs"])
        lines.append(
            f"| {r['label']} | {r['asks']} | {r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | "
            f"{int((np.sign(d) == r['direction']).sum())} of {len(d)} | {r['p_holm']:.3f} | "
            f"{r['p_tost_holm']:.3f} | **{r['verdict']}** |"
        )
    return "\n".join(lines)


def write_table(sweeps: list[str], out: str, metric: str = "dice", looks: int = 1) -> Path:
    text = markdown(contrasts(sweeps, metric, looks=looks))  # a bad sweep fails before the folder exists
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site_shift.md").write_text(text + "\n")
    return folder / "site_shift.md"
