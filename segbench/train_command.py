"""``segbench train``: Hydra's command line, checked before Hydra runs, and a sweep's lost members said.

Its own module so that ``segbench.cli`` stays a table of commands; it imports nothing heavy at
import time (``segbench train --help`` must answer without torch).
"""

from __future__ import annotations

import os
import sys
import tempfile

# Hydra's own command-line flags: those that take a value, and the one whose value is optional.
HYDRA_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
}
HYDRA_INFO_FLAGS = {"--info", "-i"}
HYDRA_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
HYDRA_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def split_hydra_args(argv: list[str]) -> tuple[list[str], bool]:
    """(overrides, whether another config was named): Hydra's flags and their values left out."""
    overrides, other_config, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0]
        if flag in HYDRA_VALUE_FLAGS:
            other_config |= flag in HYDRA_CONFIG_FLAGS
            i += 1 if "=" in arg else 2
            continue
        if flag in HYDRA_INFO_FLAGS:
            takes_topic = "=" not in arg and i + 1 < len(argv) and argv[i + 1] in HYDRA_INFO_TOPICS
            i += 2 if takes_topic else 1
            continue
        if not arg.startswith("-"):
            overrides.append(arg)
        i += 1
    return overrides, other_config


TRAIN_HELP = """usage: segbench train [-m] [--check] [group=choice ...] [key=value ...]

Train one run (or, with -m, a sweep of every combination: norm=batch,group seed=0,1,2).
The default run is the first question's setup: a residual U-Net, BN, sigmoid cross-entropy, on
the brain-MRI phantom in data/brain_phantom (make data writes it).

  --check          compose and check every run of the command, train one step and run one validation
                   batch of each on the real data, then stop: nothing is written
  --cfg job        print the composed config (-m: one member's); --info for Hydra's view
  --hydra-help     Hydra's own flags (tab completion: eval "$(segbench train -sc install=bash)")

Config groups (group=choice):
{groups}
Often changed: data.root=PATH  data.batch_size=N  optim.lr=X  seed=N  trainer.max_steps=N
  trainer.max_images=N  trainer.threads=N  trainer.device=cpu|cuda  hydra.run.dir=PATH (-m: hydra.sweep.dir)
Sweeps: hydra/launcher=parallel|packed|local_jobs|slurm|ray_local  hydra/sweeper=optuna (a search on val)

examples:
  segbench train norm=group data.batch_size=2
  segbench train -m experiment=why_bn_failed cause=none,bn_tf1 seed=0,1,2,3 hydra/launcher=parallel
  segbench train --check -m norm=batch,group,instance data.batch_size=2,8
"""


def train_help() -> str:
    from segbench.config import GROUPS, group_options

    lines = [f"  {group:<11} {', '.join(group_options(group))}" for group in (*GROUPS, "cause")]
    return TRAIN_HELP.format(groups="\n".join(lines))


def train_command(argv: list[str]) -> None:
    if any(a in ("--help", "-h") for a in argv):  # ours, at once; Hydra's (17 s with imports) is --hydra-help
        print(train_help(), end="")
        return
    check = "--check" in argv
    argv = [a for a in argv if a != "--check"]
    from segbench.train.preflight import preflight, quote_path_values
    from segbench.train.prepare import RunFinished
    from segbench.trust import config_source

    overrides, _ = split_hydra_args(argv)
    argv, overrides = quote_path_values(argv, overrides)
    source = config_source(argv)
    multirun = "-m" in argv or "--multirun" in argv
    if multirun and source.is_default and not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        # Named now, not by Hydra later, so a sweep that loses a member can say where its runs are.
        sweep_dir = pinned_sweep_dir()
        argv, overrides = [*argv, f"hydra.sweep.dir={sweep_dir}"], [*overrides, f"hydra.sweep.dir={sweep_dir}"]
    try:  # every route into the config (-cp, -cd, -cn, search paths) gets the same checks
        argv, _ = preflight(argv, overrides, source, claim_run=not check)
    except RunFinished as finished:
        print(f"segbench: {finished}")
        return
    if check:
        print(
            "segbench: checked: every run of this command composes, and one training step and one validation "
            "batch of each ran on its data; nothing was written. Run it without --check to train."
        )
        return
    from segbench.train.app import hydra_main

    rank = int(os.environ.get("RANK", 0))
    if rank > 0:
        # Under torchrun only rank 0 owns the run directory; the others keep Hydra's files apart.
        scratch = os.path.join(tempfile.gettempdir(), f"segbench-rank{rank}-{os.getpid()}")
        argv = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        argv = [
            *argv,
            f"hydra.run.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]

    sys.argv = ["segbench train", *argv]
    from segbench.train.preflight import SHOW_FLAGS, named_run_dir, sweep_jobs

    shows = any(a.split("=", 1)[0] in SHOW_FLAGS for a in argv)  # --cfg, --info, --help: nothing trains
    if not multirun or shows:
        hydra_main()
        return
    # A lost sweep worker (killed, out of memory) reaches here as joblib's or submitit's exception;
    # Hydra would print it as a traceback, so it is asked to pass it on and it is said in lines below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    from segbench.train.app import run_name
    from segbench.train.restart import sweep_report

    sweep_dir = named_run_dir(overrides, True)
    # Members known before the sweep runs, in folders named as segbench names them.
    basic = not any(o.startswith(("hydra/sweeper=", "hydra.sweep.subdir=")) for o in overrides)
    try:
        hydra_main()
    except Exception as err:  # noqa: BLE001 - each member's own errors were said in its process
        if sweep_dir is None or not basic:
            raise
        for line in sweep_report(sweep_dir, sweep_jobs(overrides, True), run_name, err):
            print(line, file=sys.stderr)
        sys.exit(1)
    if sweep_dir is not None and basic:
        lines = sweep_report(sweep_dir, sweep_jobs(overrides, True), run_name)
        if len(lines) > 1:  # a member was stopped while the others finished
            print("\n".join(lines), file=sys.stderr)
            sys.exit(1)


def pinned_sweep_dir() -> str:
    """Where Hydra's default would put this sweep (``SEGBENCH_OUTPUT`` or ./multirun, date/time)."""
    import datetime

    now = datetime.datetime.now()
    return os.path.join(
        os.environ.get("SEGBENCH_OUTPUT", "multirun"), now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S")
    )
