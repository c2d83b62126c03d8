"""``hydra/launcher=packed``: a sweep's seeds of one arm trained K at a time in one process.

    segbench train -m experiment=why_bn_failed cause=none,bn_pytorch seed=0,1,2,3,4,5,6,7 \\
        hydra/launcher=packed hydra.launcher.pack=4

Jobs that differ only in ``seed`` form an arm; each arm's jobs go in packs of ``pack``. Every job
still gets its own folder, ``.hydra/`` files and log from Hydra, so the runs are ordinary runs;
``segbench.train.packed`` trains each pack in one process (``hydra.launcher.vectorize``: one vmapped
step, or members in turn). Runs that cannot pack (float16, an lr grid, ``torch.compile``, and for
vmap two norms) train one by one, said so in the log. Imports of torch and segbench wait
until a sweep launches: Hydra imports every launcher plugin at each start.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


def _arm(overrides) -> tuple[str, ...]:
    return tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


def _collect(cfg):
    """The task Hydra runs per job here: the job's resolved config, folder and log file, untrained."""
    hydra_cfg = HydraConfig.get()
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return resolved, Path(hydra_cfg.runtime.output_dir), f"{hydra_cfg.job.name}.log"


def _refuse(message: str) -> None:
    sys.stderr.flush()
    print(f"segbench: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class PackedLauncher(Launcher):
    def __init__(self, pack: int = 4, vectorize: bool | None = None) -> None:
        super().__init__()
        # Checked before Hydra writes anything: a bad value is one line and exit 2, as elsewhere.
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            _refuse(f"hydra.launcher.pack={pack!r} must be a positive whole number of seeds per process")
        if vectorize is not None and not isinstance(vectorize, bool):
            _refuse(
                f"hydra.launcher.vectorize={vectorize!r} must be true (one vmapped step), false (members "
                "in turn) or null (vmap on a GPU, turns on the CPU)"
            )
        self.pack, self.vectorize = pack, vectorize
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx: int):
        from segbench.train.packed import pack_refusal, run_log, train_packed

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        arms: dict[tuple, list] = {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            arms.setdefault(_arm(overrides), []).append((idx, list(overrides)))
        log.info(
            "Launching %d jobs as %d arm(s), up to %d seeds per packed process",
            len(job_overrides),
            len(arms),
            self.pack,
        )
        returns: dict[int, JobReturn] = {}
        for jobs in arms.values():
            for first in range(0, len(jobs), self.pack):
                returns.update(self._run_pack(jobs[first : first + self.pack], pack_refusal, run_log, train_packed))
        failed = [r for r in returns.values() if r.status == JobStatus.FAILED]
        if failed:
            from segbench.errors import SegbenchError, one_line

            for ret in failed:
                print(
                    f"segbench: run {' '.join(filter_overrides(ret.overrides))} failed: {one_line(ret._return_value)}",
                    file=sys.stderr,
                )
            usage = all(isinstance(r._return_value, SegbenchError) for r in failed)
            sys.exit(2 if usage else 1)
        return [returns[i] for i in sorted(returns)]

    def _run_pack(self, jobs, pack_refusal, run_log, train_packed) -> dict[int, JobReturn]:
        from segbench.train.lr_grid import train_with_lr_grid
        from segbench.train.restart import continue_if_saved

        collected = {}
        for idx, overrides in jobs:
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            collected[idx] = run_job(
                hydra_context=self.hydra_context,
                task_function=_collect,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        cfgs, dirs, logs = zip(*(ret.return_value for ret in collected.values()))
        for cfg, run_dir in zip(cfgs, dirs):
            continue_if_saved(cfg, run_dir)  # a requeued pack, or the same sweep run again
        refusal = next(filter(None, (pack_refusal(cfg, self.vectorize) for cfg in cfgs)), None)
        if len(cfgs) > 1 and refusal is None:
            log.info("training seeds %s packed in one process", ", ".join(str(c.seed) for c in cfgs))
            results = train_packed(list(cfgs), list(dirs), list(logs), self.vectorize)
        else:
            if refusal:
                log.info("%s; training seeds %s one by one", refusal, ", ".join(str(c.seed) for c in cfgs))
            results = []
            for cfg, run_dir, log_name in zip(cfgs, dirs, logs):
                try:
                    with run_log(run_dir, log_name):
                        results.append(train_with_lr_grid(cfg, run_dir))
                except Exception as err:  # noqa: BLE001 (reported per run, like a failed Hydra job)
                    results.append(err)
        for ret, result, run_dir in zip(collected.values(), results, dirs):
            if isinstance(result, BaseException):
                ret.status, ret.return_value = JobStatus.FAILED, result
            else:
                ret.status = JobStatus.COMPLETED
                ret.return_value = float(result["val"]["best"].get(result["main_metric"], float("nan")))
                print(f"run directory: {run_dir}")
        return collected
