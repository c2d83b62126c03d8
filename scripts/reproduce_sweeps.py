"""The machinery of ``scripts/reproduce.py``: run one claim's sweep (skipped when complete) and compare
it, read per-seed values, and render a section's claims as one judged family (Holm, TOST at the
declared margin, convergence of every run the section swept).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.compare import compare
from segbench.analysis.decide import Design, decide_family
from segbench.analysis.runs import find_runs
from segbench.analysis.verdicts import arm_converged

SWEPT: list = []  # the runs of the claim being rendered


def sweep(
    name: str,
    out: Path,
    seeds: list[int],
    *overrides: str,
    folder_name: str | None = None,
    compare_with: tuple[str, ...] = (),
    by: list[str] | None = None,
):
    """Run ``experiment=name`` over ``seeds`` as one sweep (skipped when already complete), compare it
    (with the runs of the sweeps in ``compare_with``), and return all those runs."""
    folder = out / "runs" / (folder_name or name)
    expected = len(seeds)
    for item in overrides:
        key, _, value = item.partition("=")
        if "," in value and not key.startswith(("study.", "hydra")) and "[" not in value:
            expected *= len(value.split(","))
    done = list(folder.rglob("metrics.json")) if folder.exists() else []
    if len([p for p in done if p.parent.parent == folder]) < expected:
        # Two runs at a time on one thread each: small convs use two cores better that way than one
        # run on two threads.
        cmd = [
            sys.executable,
            "-m",
            "segbench",
            "train",
            "-m",
            f"experiment={name}",
            "trainer.progress=false",
            f"seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={folder}",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            *overrides,
        ]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    folders = [str(folder), *(str(out / "runs" / other) for other in compare_with)]
    compare(folders, str(out / (folder_name or name)), by=by)
    runs = find_runs(folders)
    SWEPT.extend(runs)  # the section's claims are judged converged only if all its runs are
    return runs


def by_seed(runs, read, **match) -> dict:
    """``{seed: read(run)}`` over the runs whose metrics match (norm=..., global_batch_size=...)."""
    return {r.metrics["seed"]: read(r) for r in runs if all(r.metrics.get(k) == v for k, v in match.items())}


def test_metric(runs) -> str:
    return runs[0].metrics["report_metric"]


def claim_line(text: str, res: dict, direction: int, unit: str = "") -> list:
    """A claim of a section, judged with the section's others when the section is rendered."""
    return [("claim", text, res, direction, unit)]


def render(lines: list, design: Design) -> list[str]:
    """Judge the section's claims as one family (Holm, TOST at the declared margin, convergence)."""
    claims = [item for item in lines if isinstance(item, tuple)]
    conv = arm_converged(SWEPT) if SWEPT else None
    judged = iter(decide_family([c[2]["diffs"] for c in claims], design, [c[3] for c in claims], [conv] * len(claims)))
    out = []
    for item in lines:
        if not isinstance(item, tuple):
            out.append(item)
            continue
        _, text, res, _, unit = item
        v = next(judged)
        state = {True: "arms converged", False: "arms not converged", None: "convergence not checked"}[conv]
        out.append(
            f"- {text}: **{v['verdict']}** — difference {stats.describe(res, unit)}; Holm p={v['p_holm']:.3f} "
            f"(raw {v['p']:.3f}, family of {v['family']}), median {v['median']:+.3f}, Hodges-Lehmann "
            f"{v['hodges_lehmann']:+.3f}, equivalence provable at this n only within ±"
            f"{v['equivalence_margin_supported']:.3f}; {state}; scope: these test subjects."
        )
    return out


def lr_note(runs) -> str:
    chosen = Counter((r.metrics["norm"], r.metrics.get("lr")) for r in runs)
    grid = runs[0].metrics.get("lr_grid")
    if not grid:
        return f"one learning rate for every arm ({runs[0].metrics.get('lr')})"
    cells = ", ".join(f"{norm}: lr {lr:g} in {n} of its seeds" for (norm, lr), n in sorted(chosen.items()))
    return f"per-arm lr grid {sorted(float(k) for k in grid)}, chosen on val per seed ({cells})"


def curve_mean(run, tag: str) -> float:
    values = run.scalar(tag)[1]
    return float(np.mean(values)) if len(values) else float("nan")
