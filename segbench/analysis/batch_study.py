"""The planned contrasts of a norm x batch-size sweep at equal images (``norm_vs_batch_size_converged``).

``compare`` judges every pair of arms; a batch-size study asks fewer, sharper questions, declared
here before its runs were read: BN against a challenger (GN by default, Wu & He 2018; or FRN,
EvoNorm-S0, WS+GN) at the small and the large batch, their interaction, BN at the small batch
against BN at the large one (the first question's small-batch cause), and BN against no norm at
each batch size and the change between them (does BN hurt more at batch 2?). One family, Holm over it;
per-seed differences of the same seed (interactions are
differences of per-seed differences); each contrast judged only where every arm it reads converged.

    segbench report batch-size <sweep> --out out
    segbench report batch-size <batch-2 sweep> <batch-16 sweep> --out out --challenger frn
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.arms import result
from segbench.analysis.decide import Design, decide_family, declared_design, family_level, render
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.verdicts import contrast_converged, run_convergence
from segbench.errors import invalid_choice

# (label, terms: (+1/-1, norm, batch) summed per seed, claimed direction, what it asks). ``X`` is the
# challenger the study sets against BN (GN by default; FRN, EvoNorm-S0 or WS+GN for the newcomers).
CONTRASTS = (
    (
        "BN − {X} at the small batch",
        ((+1, "batch", "small"), (-1, "X", "small")),
        -1,
        "{X} beats BN at small batches ({claim})",
    ),
    (
        "BN − {X} at the large batch",
        ((+1, "batch", "large"), (-1, "X", "large")),
        +1,
        "BN at least matches {X} at large batches",
    ),
    (
        "interaction: (BN − {X}) large − (BN − {X}) small",
        ((+1, "batch", "large"), (-1, "X", "large"), (-1, "batch", "small"), (+1, "X", "small")),
        +1,
        "BN's deficit grows as the batch shrinks",
    ),
    (
        "BN small batch − BN large batch",
        ((+1, "batch", "small"), (-1, "batch", "large")),
        -1,
        "the small-batch cause: BN at batch 2 predicts worse than at 16",
    ),
    (
        "BN − no norm at the small batch",
        ((+1, "batch", "small"), (-1, "none", "small")),
        -1,
        "the first question's symptom at the small batch",
    ),
    (
        "BN − no norm at the large batch",
        ((+1, "batch", "large"), (-1, "none", "large")),
        0,
        "BN against no norm at the large batch",
    ),
    (
        "(BN − no norm) small − (BN − no norm) large",
        ((+1, "batch", "small"), (-1, "none", "small"), (-1, "batch", "large"), (+1, "none", "large")),
        -1,
        "BN hurts more (or helps less) at the small batch",
    ),
)
# How a verdict names the arms of a two-arm contrast (the challenger by its CHALLENGERS name).
ARM_NAMES = {"batch": "BN", "none": "no norm"}
# How the contrasts name a challenger, and whose claim "beats BN at small batches" is.
CHALLENGERS = {
    "group": ("GN", "Wu & He 2018"),
    "frn": ("FRN", "Singh & Krishnan 2020"),
    "evonorm_s0": ("EvoNorm-S0", "Liu et al. 2020"),
    "ws_group": ("WS+GN", "Qiao et al. 2019"),
}


def _arms(runs: list[Run]) -> dict[tuple[str, int], dict[int, Run]]:
    arms: dict[tuple[str, int], dict[int, Run]] = defaultdict(dict)
    for run in runs:
        batch = run.metrics.get("batch_size", run.metrics.get("global_batch_size"))
        arms[(str(run.metrics["norm"]), int(batch))][int(run.metrics["seed"])] = run
    return arms


def contrasts(
    sweeps: list[str], metric: str = "dice", design: Design | None = None, challenger: str = "group", looks: int = 1
) -> dict:
    """Each planned contrast's per-seed differences, interval, Holm-adjusted verdict and convergence.

    ``challenger`` is the norm set against BN (a key of ``CHALLENGERS``); the family is the
    contrasts whose arms the sweeps hold, so a sweep without no-norm arms drops those three.
    ``looks``: the looks the study planned before its runs; each is judged at alpha / looks.
    """
    if challenger not in CHALLENGERS:
        raise invalid_choice("challenger", challenger, CHALLENGERS)
    name, claim = CHALLENGERS[challenger]
    runs = find_runs(list(sweeps))
    design = design or declared_design(runs, looks)
    arms = _arms(runs)
    batches = sorted({b for _, b in arms})
    size = {"small": batches[0], "large": batches[-1]}
    rows = []
    for label, terms, direction, asks in CONTRASTS:
        label, asks = label.format(X=name), asks.format(X=name, claim=claim)
        terms = tuple((sign, challenger if norm == "X" else norm, which) for sign, norm, which in terms)
        keys = [(norm, size[which]) for _, norm, which in terms]
        if any(k not in arms for k in keys) or len(batches) < 2:
            continue
        seeds = sorted(set.intersection(*(set(arms[k]) for k in keys)))
        diffs = {
            s: sum(sign * (result(arms[k][s], metric) or np.nan) for (sign, _, _), k in zip(terms, keys)) for s in seeds
        }
        converged = contrast_converged(*(list(arms[k].values()) for k in set(keys)))
        rows.append(
            {
                "label": label,
                "asks": asks,
                "direction": direction,
                "arms": sorted(set(keys)),
                # a and b by name, for the words of a difference found without a claimed direction
                "names": tuple(ARM_NAMES.get(norm, name) for _, norm, _ in terms) if len(terms) == 2 else None,
                "converged": converged,
                **stats.paired(diffs, {s: 0.0 for s in seeds}),
            }
        )
    for row, verdict in zip(
        rows,
        decide_family(
            [r["diffs"] for r in rows], design, [r["direction"] for r in rows], [r["converged"] for r in rows]
        ),
    ):
        row.update(verdict)
        if row["direction"] == 0 and row["names"]:
            row["verdict"] = render(row, row["converged"], names=row["names"])
    per_arm = {
        f"{n} bs={b}": {
            "seeds": len(by),
            "mean": float(np.mean([result(r, metric) for r in by.values()])),
            "converged": sum(run_convergence(r).get("converged") is True for r in by.values()),
            "steps": sorted({r.metrics.get("steps") for r in by.values()}),
        }
        for (n, b), by in sorted(arms.items())
    }
    return {
        "rows": rows,
        "arms": per_arm,
        "metric": metric,
        "margin": design.margin,
        "level": family_level(design),
        "batches": size,
        "runs": len(runs),
    }


def markdown(numbers: dict) -> str:
    lines = [
        f"{numbers['runs']} runs; test {numbers['metric']} of the checkpoint chosen on val; margin "
        f"±{numbers['margin']:g} declared in the experiment file; Holm over the {len(numbers['rows'])} contrasts"
        f"{numbers['level']}.",
        "",
        "| arm | seeds | mean | converged | steps |",
        "|---|---|---|---|---|",
    ]
    for name, a in numbers["arms"].items():
        lines.append(
            f"| {name} | {a['seeds']} | {a['mean']:.3f} | {a['converged']}/{a['seeds']} | "
            f"{', '.join(map(str, a['steps']))} |"
        )
    lines += [
        "",
        "| contrast | what it asks | mean [95 % CI] | seeds in the claimed direction | Holm p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in numbers["rows"]:
        d = np.asarray(r["diffs"])
        share = (
            f"{int((np.sign(d) == r['direction']).sum())} of {len(d)}"
            if r["direction"]
            else f"{int((d < 0).sum())} of {len(d)} below 0"
        )
        lines.append(
            f"| {r['label']} | {r['asks']} | {r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {share} | "
            f"{r['p_holm']:.3f} | **{r['verdict']}** |"
        )
    return "\n".join(lines)


def write_table(sweeps: list[str], out: str, metric: str = "dice", challenger: str = "group", looks: int = 1) -> Path:
    numbers = contrasts(
        sweeps, metric, challenger=challenger, looks=looks
    )  # a bad challenger fails before the folder exists
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch_size.md").write_text(markdown(numbers) + "\n")
    return folder / "batch_size.md"
