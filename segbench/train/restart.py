"""Requeued, restarted and re-run jobs continue their runs instead of starting them again.

Three ways a run's folder already holds a run when its job starts: SLURM requeued a preempted
job (submitit relaunches the member with its original arguments), torchrun restarted the workers
(``--max-restarts``), or the user ran the same sweep command again after a kill. In each, the
member continues from ``checkpoints/last.pt`` when the folder's checkpoint was trained with the
same settings, a finished member is left as it is, and a checkpoint of other settings refuses the
whole sweep before Hydra writes into any folder (Hydra rewrites a member's ``.hydra/`` first).
A plain single run into a folder that holds one is still refused: there the user says resume.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from segbench.errors import SegbenchError

log = logging.getLogger(__name__)

# Set by SLURM in a requeued job and by torchrun in restarted workers.
RESTART_VARIABLES = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")


def restart_count() -> int:
    """How many times the cluster has restarted this job (0: its first start)."""
    counts = []
    for name in RESTART_VARIABLES:
        try:
            counts.append(int(os.environ.get(name, 0)))
        except ValueError:
            counts.append(0)
    return max(counts)


def saved_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def continue_if_saved(cfg, run_dir: Path) -> bool:
    """Set ``trainer.resume`` for a sweep member (or restarted run) whose folder holds ``last.pt``.

    ``prepare`` then checks the checkpoint's settings against the member's and finds a finished
    run finished; returns whether the run continues.
    """
    from omegaconf import open_dict

    if cfg.trainer.get("resume") or saved_checkpoint(run_dir) is None:
        return False
    with open_dict(cfg):
        cfg.trainer.resume = True
    log.info("%s holds a saved run: it continues from checkpoints/last.pt (or, finished, is left as it is)", run_dir)
    return True


@dataclass
class SweepState:
    """What a sweep folder already holds, member by member (folder names as Hydra will make them)."""

    finished: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def line(self) -> str | None:
        if not self.finished and not self.unfinished:
            return None
        total = len(self.finished) + len(self.unfinished) + len(self.new)
        parts = [
            f"{len(self.finished)} finished (left as they are)" if self.finished else "",
            f"{len(self.unfinished)} unfinished (continued from last.pt: {', '.join(self.unfinished[:3])}"
            f"{' ...' if len(self.unfinished) > 3 else ''})"
            if self.unfinished
            else "",
            f"{len(self.new)} new" if self.new else "",
        ]
        return (
            f"the sweep folder already holds {len(self.finished) + len(self.unfinished)} of its {total} members: "
            + "; ".join(p for p in parts if p)
        )


def sweep_state(sweep_dir: Path, jobs: list[list[str]], member_name, compose) -> SweepState:
    """Classify every member; refuse (one line) a member whose checkpoint has other settings."""
    from omegaconf import OmegaConf

    from segbench.train.checkpoint import changed_settings, load_checkpoint

    state = SweepState()
    for number, job in enumerate(jobs):
        name = f"{number}_{member_name(job)}"
        run = sweep_dir / name
        checkpoint = saved_checkpoint(run)
        if checkpoint is None:
            state.new.append(name)
            continue
        saved = load_checkpoint(checkpoint, ("config", "step"))
        try:
            now = OmegaConf.to_container(compose(job), resolve=True)
        except Exception:  # noqa: BLE001 - resolvable only inside Hydra: train() checks it there
            now = None
        changed = changed_settings(saved["config"], now) if now is not None else []
        if changed:
            raise SegbenchError(
                f"{run} holds a run trained with other settings ({', '.join(changed[:3])}); "
                "this sweep would continue it as another run: use another hydra.sweep.dir, "
                "or the settings it was trained with"
            )
        metrics = run / "metrics.json"
        try:
            ended = json.loads(metrics.read_text()).get("steps") == int(saved["step"]) if metrics.is_file() else False
        except (OSError, ValueError):
            ended = False
        (state.finished if ended else state.unfinished).append(name)
    return state


def member_status(run: Path) -> str:
    """``finished``, ``unfinished (last.pt at step N)`` or ``not started`` for one sweep member's folder."""
    metrics = run / "metrics.json"
    try:
        if metrics.is_file() and "test" in json.loads(metrics.read_text()):
            return "finished"
    except (OSError, ValueError):
        pass
    checkpoint = saved_checkpoint(run)
    if checkpoint is None:
        return "not started" if not run.exists() else "stopped before its first checkpoint"
    from segbench.train.checkpoint import load_checkpoint

    try:
        return f"unfinished (last.pt at step {int(load_checkpoint(checkpoint, ('step',))['step'])})"
    except Exception:  # noqa: BLE001 - a checkpoint cut short by the kill: what matters is that it is not done
        return "unfinished (its last.pt cannot be read)"


def sweep_report(sweep_dir: Path, jobs: list[list[str]], member_name, err: BaseException | None = None) -> list[str]:
    """One line per member that did not finish, then a summary (``err``: what stopped the sweep, if it was stopped)."""
    from segbench.errors import one_line

    names = [f"{number}_{member_name(job)}" for number, job in enumerate(jobs)]
    status = {name: member_status(sweep_dir / name) for name in names}
    lines = [f"segbench: sweep member {name}: {state}" for name, state in status.items() if state != "finished"]
    done = sum(state == "finished" for state in status.values())
    if err is None and done == len(names):
        return lines + [f"segbench: {done} of {len(names)} members finished in {sweep_dir}"]
    if err is None:
        why = "a member was stopped"
    else:
        text = one_line(err)
        codes = re.search(r"exit codes of the workers are (\{[^}]*\})", text)  # joblib's (loky's) wording
        why = (
            f"a worker process was lost, exit codes {codes.group(1)}"
            if codes
            else f"{type(err).__name__}: {text.split('. ')[0][:160]}"
        )
    lines.append(
        f"segbench: the sweep ended early ({why}); {done} of {len(names)} members finished in {sweep_dir}; "
        "the same command continues the others and leaves the finished ones"
    )
    return lines
