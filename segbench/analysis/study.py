"""``segbench study``: a sweep that adds paired seeds in rounds until every comparison is decided.

Each round is one ``segbench train -m <overrides> seed=<new seeds>`` into ``<out>/round_<k>``;
after it, every comparison of the runs so far is judged by ``segbench.analysis.decide`` at the
level ``alpha / looks``, the looks planned from the first round, the round size and the cap
before any seed ran (Bonferroni over looks: stopping early is then not optional stopping).
``study.json`` records the design; ``compare`` on ``<out>`` reads it and judges with the same looks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from segbench.analysis import verdicts
from segbench.analysis.decide import Design, planned_looks, sequential
from segbench.errors import SegbenchError
from segbench.io import write_json

DESIGN_FILE = "study.json"


def read_design(paths: list[str]) -> dict | None:
    """The sequential design written by ``segbench study`` in one of ``paths``, if any."""
    for item in paths:
        path = Path(item) / DESIGN_FILE
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _comparisons(out: Path, metric: str | None, design: Design) -> list[dict]:
    from segbench.analysis.arms import arm_key, label, result, sort_key, varying_keys
    from segbench.analysis.runs import find_runs

    runs = find_runs([str(out)])
    metric = metric or runs[0].metrics.get("report_metric", "dice")
    varying = varying_keys(runs)
    arms = defaultdict(list)
    for run in runs:
        arms[arm_key(run, varying)].append(run)
    return verdicts.paired_comparisons(arms, metric, result, label, sort_key, design)


def run_study(overrides: list[str], out: str, first: int = 4, per_round: int = 4, max_seeds: int = 20,
              start_seed: int = 0, margin: float | None = None, metric: str | None = None,
              alpha: float = 0.05) -> list[dict]:
    """Train rounds of seeds until decided or capped; returns the last look's comparisons."""
    if any(o.split("=", 1)[0].lstrip("+") in ("seed", "hydra.sweep.dir") for o in overrides):
        raise SegbenchError("segbench study chooses seed= and hydra.sweep.dir= itself; leave them out "
                            "(use --start-seed and --out)")
    try:
        looks = planned_looks(first, per_round, max_seeds)
    except ValueError as err:
        raise SegbenchError(f"segbench study: {err}") from None
    if margin is not None and not margin > 0:
        raise SegbenchError(f"--margin={margin} must be a positive number in the metric's units, e.g. 0.02")
    folder = Path(out)
    if margin is None:  # the margin the study's config declares, read before any seed runs
        from segbench.config import compose

        plain = [o for o in overrides if "," not in o.partition("=")[2]]  # swept values do not change it
        try:
            margin = float(compose(plain).study.margin)
        except Exception:  # noqa: BLE001 - a bad override: the first round's `train` names it in one line
            margin = Design().margin
    design = Design(margin=margin, alpha=alpha, looks=looks)
    state = {"round": 0, "comparisons": []}

    def run_round(seeds: list[int]) -> None:
        state["round"] += 1
        target = folder / f"round_{state['round']}"
        cmd = [sys.executable, "-m", "segbench", "train", "-m", *overrides, f"seed={','.join(map(str, seeds))}",
               f"hydra.sweep.dir={target}"]
        print(f"round {state['round']}: seeds {seeds[0]}-{seeds[-1]}", flush=True)
        if subprocess.run(cmd).returncode:
            raise SegbenchError(f"round {state['round']} failed (see its output above); the runs so far stay in {folder}")
        if state["round"] == 1:
            write_json(folder / DESIGN_FILE, {"first": first, "per_round": per_round, "max_seeds": max_seeds,
                                              "looks": looks, "alpha": alpha, "margin": margin,
                                              "overrides": overrides})

    def read() -> list[list[float]]:
        state["comparisons"] = _comparisons(folder, metric, design)
        return [c["diffs"] for c in state["comparisons"]]

    def report(look: int, judged: list[dict]) -> None:
        for comp, verdict in zip(state["comparisons"], judged):
            print(f"  look {look}/{looks}: {comp['a']} vs {comp['b']}: {verdict['verdict']} "
                  f"(n={verdict['n']}, Holm p={verdict['p_holm']:.3f}, TOST Holm p={verdict['p_tost_holm']:.3f})",
                  flush=True)

    seeds = list(range(start_seed, start_seed + first))
    converged = lambda: [c["converged"] for c in state["comparisons"]]  # noqa: E731
    return sequential(run_round, read, seeds, per_round, max_seeds, design, converged=converged, report=report)
