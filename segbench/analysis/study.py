"""``segbench study``: a sweep that adds paired seeds in rounds until every comparison is decided.

Each round is one ``segbench train -m <overrides> seed=<new seeds>`` into ``<out>/round_<k>``;
after it, every comparison of the runs so far is judged by ``segbench.analysis.decide`` at the
level ``alpha / looks``, the looks planned from the first round, the round size and the cap
before any seed ran (Bonferroni over looks: stopping early is then not optional stopping).
``study.json`` records the design before the first seed runs; ``compare`` on ``<out>`` reads it
and judges with the same looks. The same command again continues a stopped study (a stopped process's or
a job's end): each round is the same ``train -m`` command, whose finished members are left as
they are and unfinished ones continue from their last checkpoint. A command whose design differs
from the recorded one is refused before anything runs: changing the looks or the cap after seeing
a round would make stopping optional again.
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
    """The sequential design written by ``segbench study`` in one of ``paths``, if any.

    A path may be the study's folder or runs inside it (``<study>/round_<k>/<run>``, or a record
    of runs kept one folder down): runs of a sequential study are judged at its per-look level
    however they are named.
    """
    for item in paths:
        here = Path(item).resolve()
        for folder in (here, *here.parents[:2]):
            path = folder / DESIGN_FILE
            if path.is_file():
                return json.loads(path.read_text())
    return None


def with_planned_looks(design: Design, paths: list[str]) -> tuple[Design, dict | None]:
    """``design`` judged at alpha / looks when ``paths`` belong to a sequential study (its study.json)."""
    planned = read_design(paths)
    if not planned:
        return design, None
    return Design(design.margin, float(planned["alpha"]), int(planned["looks"]), design.power), planned


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


def _design_record(
    overrides: list[str],
    first: int,
    per_round: int,
    max_seeds: int,
    start_seed: int,
    looks: int,
    alpha: float,
    margin: float,
) -> dict:
    return {
        "first": first,
        "per_round": per_round,
        "max_seeds": max_seeds,
        "start_seed": start_seed,
        "looks": looks,
        "alpha": alpha,
        "margin": margin,
        "overrides": list(overrides),
    }


def _check_recorded(folder: Path, record: dict) -> bool:
    """Whether ``folder`` holds this study's design already; refuse (one line) another study's."""
    path = folder / DESIGN_FILE
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SegbenchError(
            f"{path} cannot be read ({type(err).__name__}); it holds the design of the study "
            "in this folder: restore it, or choose another --out"
        ) from None
    # A key missing from the file (written before it was recorded) cannot be compared and is let be.
    differs = [key for key in record if key in recorded and recorded[key] != record[key]]
    if differs:
        key = differs[0]
        raise SegbenchError(
            f"--out {folder} holds another study: its {DESIGN_FILE} declares {key}="
            f"{recorded[key]!r}, this command {key}={record[key]!r}; continue it with the "
            "command it was declared with, or choose another --out"
        )
    return True


def _check_first_round(overrides: list[str], seeds: list[int], target: Path) -> None:
    """``segbench train --check`` of the first round: a bad override is refused before the design is written."""
    cmd = [
        sys.executable,
        "-m",
        "segbench",
        "train",
        "--check",
        "-m",
        *overrides,
        f"seed={','.join(map(str, seeds))}",
        f"hydra.sweep.dir={target}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise SegbenchError(reason.removeprefix("segbench: ").removeprefix("error: "))


def run_study(
    overrides: list[str],
    out: str,
    first: int = 4,
    per_round: int = 4,
    max_seeds: int = 20,
    start_seed: int = 0,
    margin: float | None = None,
    metric: str | None = None,
    alpha: float = 0.05,
) -> list[dict]:
    """Train rounds of seeds until decided or capped; returns the last look's comparisons."""
    if any(o.split("=", 1)[0].lstrip("+") in ("seed", "hydra.sweep.dir") for o in overrides):
        raise SegbenchError(
            "segbench study chooses seed= and hydra.sweep.dir= itself; leave them out (use --start-seed and --out)"
        )
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
        except Exception:  # noqa: BLE001 - a bad override: the first round's `train --check` names it in one line
            margin = Design().margin
    design = Design(margin=margin, alpha=alpha, looks=looks)
    record = _design_record(overrides, first, per_round, max_seeds, start_seed, looks, alpha, margin)
    seeds = list(range(start_seed, start_seed + first))
    if _check_recorded(folder, record):
        print(
            f"continuing the study declared in {folder / DESIGN_FILE}: finished runs are read, unfinished "
            "ones continue from their last checkpoint",
            flush=True,
        )
    else:
        _check_first_round(overrides, seeds, folder / "round_1")
        write_json(folder / DESIGN_FILE, record)  # declared before any seed runs
    state = {"round": 0, "comparisons": []}

    def run_round(seeds: list[int]) -> None:
        state["round"] += 1
        target = folder / f"round_{state['round']}"
        cmd = [
            sys.executable,
            "-m",
            "segbench",
            "train",
            "-m",
            *overrides,
            f"seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={target}",
        ]
        print(f"round {state['round']}: seeds {seeds[0]}-{seeds[-1]}", flush=True)
        if subprocess.run(cmd).returncode:
            raise SegbenchError(
                f"round {state['round']} failed (see its output above); the runs so far stay in "
                f"{folder}, and the same command continues the study"
            )

    def read() -> list[list[float]]:
        state["comparisons"] = _comparisons(folder, metric, design)
        return [c["diffs"] for c in state["comparisons"]]

    def report(look: int, judged: list[dict]) -> None:
        for comp, verdict in zip(state["comparisons"], judged):
            print(
                f"  look {look}/{looks}: {comp['a']} vs {comp['b']}: {verdict['verdict']} "
                f"(n={verdict['n']}, Holm p={verdict['p_holm']:.3f}, TOST Holm p={verdict['p_tost_holm']:.3f})",
                flush=True,
            )

    converged = lambda: [c["converged"] for c in state["comparisons"]]  # noqa: E731
    return sequential(run_round, read, seeds, per_round, max_seeds, design, converged=converged, report=report)
