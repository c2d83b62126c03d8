"""``segbench torchrun [TORCHRUN OPTIONS] train [OVERRIDES]``: torchrun, with one line when a rank is lost.

Plain ``torchrun -m segbench train`` works; when a rank dies (killed, out of memory, a lost node)
torchrun stops the others and prints its ``ChildFailedError`` traceback, 40-75 lines that never say
where the run is or how to continue it. This wrapper runs the same elastic agent (every torchrun
option is accepted as torchrun parses it, ``--max-restarts`` included) and, when the job fails,
prints one line per failed rank (its global rank, its signal or exit code) and the command that
resumes the run from its last checkpoint, then exits 1. The surviving ranks stop on their own:
torchrun sends them SIGTERM, and a rank whose peer vanished inside a collective ends with one line
(``segbench.train.app``) instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path

from segbench.errors import SegbenchError

RUN_NOTE = "SEGBENCH_RUN_NOTE"  # rank 0 writes its run folder here, for the resume line
REFUSED_SUFFIX = ".refused"  # beside it: rank 0's one-line refusal of a bad command, said once by the launcher
LOST_PEER_EXIT = 70  # a rank that ended because another rank vanished: not a failure of its own


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, the training overrides) around the word ``train``."""
    if "train" not in argv:
        raise SegbenchError(
            "segbench torchrun: name the command to run after torchrun's options: "
            "segbench torchrun --nproc_per_node=2 train norm=syncbatch ..."
        )
    i = argv.index("train")
    if any(a in ("-m", "--module", "--no-python", "--no_python") for a in argv[:i]):
        raise SegbenchError("segbench torchrun runs `-m segbench train` itself; leave out -m / --no-python")
    return argv[:i], argv[i + 1 :]


def failure_lines(failures: dict, run_dir: str | None, options: list[str], overrides: list[str]) -> list[str]:
    """One line per failed rank, then how to resume (``failures``: global rank -> ProcessFailure)."""
    lines = []
    own = {r: f for r, f in failures.items() if f.exitcode != LOST_PEER_EXIT}
    for rank, failure in sorted((own or failures).items()):  # a rank that only lost its peer is no cause
        how = (
            f"was killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else "lost its peer ranks"
            if failure.exitcode == LOST_PEER_EXIT
            else f"exited with code {failure.exitcode}"
        )
        lines.append(
            f"segbench torchrun: rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}; "
            "torchrun stopped the other ranks"
        )
    if run_dir and (Path(run_dir) / "checkpoints" / "last.pt").exists():
        kept = [o for o in overrides if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
        command = shlex.join(["segbench", "torchrun", *options, "train", *kept, f"trainer.resume={run_dir}"])
        lines.append(f"segbench torchrun: the run resumes from its last checkpoint: {command}")
    elif run_dir:
        lines.append(f"segbench torchrun: {run_dir} holds no checkpoint yet; start the run again")
    return lines


def main(argv: list[str]) -> None:
    options, overrides = split_argv(argv)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    parser = torchrun.get_args_parser()

    def refuse(message: str):
        raise SegbenchError(f"segbench torchrun: {message}")

    parser.error = refuse  # one line, not argparse's usage block
    args = parser.parse_args([*options, "-m", "segbench", "train", *overrides])
    # The agent's own warnings and errors ("Sending process ... closing signal SIGTERM", "failed (exitcode:
    # 2) local_rank: 0") say what the lines below say; a failure of the agent itself still raises.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    note = Path(tempfile.mkdtemp(prefix="segbench-torchrun-")) / "run_dir"
    os.environ[RUN_NOTE] = str(note)
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        refused = note.with_name(note.name + REFUSED_SUFFIX)
        if refused.exists():  # every rank refused the command before training: said once
            raise SegbenchError(refused.read_text().strip()) from None
        run_dir = note.read_text().strip() if note.exists() else None
        for line in failure_lines(err.failures, run_dir, options, overrides):
            print(line, file=sys.stderr)
        sys.exit(1)
    finally:
        note.unlink(missing_ok=True)
        note.with_name(note.name + REFUSED_SUFFIX).unlink(missing_ok=True)
        note.parent.rmdir()


def refused_under_launcher(message: str) -> bool:
    """A rank under ``segbench torchrun`` refusing a bad command: rank 0 hands the line to the
    launcher (which says it once), the others say nothing. False outside ``segbench torchrun``."""
    target = os.environ.get(RUN_NOTE)
    if not target or "RANK" not in os.environ:
        return False
    if int(os.environ["RANK"]) == 0:
        try:
            Path(target + REFUSED_SUFFIX).write_text(message + "\n")
        except OSError:
            return False
    return True


def write_run_note(run_dir: Path) -> None:
    """Rank 0 under ``segbench torchrun``: say where the run is, for the launcher's resume line."""
    target = os.environ.get(RUN_NOTE)
    if target and int(os.environ.get("RANK", 0)) == 0:
        try:
            Path(target).write_text(str(run_dir.resolve()))
        except OSError:  # the launcher's scratch folder is gone: the resume line is all it costs
            pass
