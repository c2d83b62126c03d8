"""``segbench train``: the Hydra application around ``train(cfg, run_dir)``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError, one_line

# Keys that name a sweep member's folder: the ones its sweep varies, paths excepted (they split a name
# into nested folders); without that list, every override but paths, trainer.* and hydra.*. The
# full config stays in each run's .hydra/.
PATH_KEYS = ("data.root", "data.sbd_root", "model.init_from", "model.backbone_weights")
UNNAMED_KEYS = ("hydra", "trainer.", "experiment", *PATH_KEYS)
SHORT_KEYS = {"data.batch_size": "bs"}


SWEPT_KEYS_ENV = "SEGBENCH_SWEPT_KEYS"  # set by ``segbench train -m``: the keys the sweep varies


def run_name(overrides) -> str:
    """A sweep member's folder name from the overrides its sweep varies: ``norm=batch,bs=4,seed=0``."""
    swept = set(filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(","))) or None
    parts = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        wanted = (
            key in swept and not key.startswith(PATH_KEYS) if swept is not None else not key.startswith(UNNAMED_KEYS)
        )
        if wanted:
            parts.append(f"{SHORT_KEYS.get(key, key)}={value.replace('/', '_')}")
    return ",".join(parts) or "run"


OmegaConf.register_new_resolver("segbench_run_name", run_name, replace=True)


@hydra.main(config_path="pkg://segbench.configs", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Train one run; the return value (best validation metric, never test) is what Hydra sweepers optimise."""
    import torch

    from segbench.train.launch import write_run_note
    from segbench.train.lr_grid import train_with_lr_grid
    from segbench.train.preemption import Preempted
    from segbench.train.restart import continue_if_saved
    from segbench.train.rundir import remove_if_untouched
    from segbench.train.trainer import TrainingDiverged

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    _share_cores(cfg, hydra_cfg)
    write_run_note(run_dir)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            continue_if_saved(cfg, run_dir)  # a requeued member, or the same sweep run again
        if cfg.trainer.resume and hydra_cfg.output_subdir is None and int(os.environ.get("RANK", 0)) == 0:
            _record_resume(cfg, hydra_cfg, run_dir)
        metrics = train_with_lr_grid(cfg, run_dir)
    except (SegbenchError, OSError) as err:  # OSError: no space left, a read-only folder, no permission
        print(f"segbench: error: {one_line(err)}", file=sys.stderr)
        _close_log_files()
        remove_if_untouched(run_dir)  # a run refused at its start leaves nothing behind
        sys.exit(2)
    except torch.OutOfMemoryError as err:  # the GPU's: the preflight estimates only a CPU run's memory
        print(
            f"segbench: error: out of memory ({one_line(err)[:200]}); lower data.batch_size, data.size or "
            "model.width, or use trainer.precision=bf16-mixed",
            file=sys.stderr,
        )
        _close_log_files()
        remove_if_untouched(run_dir)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"segbench: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except Preempted as stopped:  # a cluster's signal: last.pt saved at that step, no test yet
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"segbench: {stopped}", file=sys.stderr)
        if "joblib" in str(hydra_cfg.launcher.get("_target_", "")):
            # One worker of a local parallel sweep was stopped: the others go on, and the sweep's end
            # reports this member as unfinished (exiting here would abort the whole joblib batch).
            return float("nan")
        sys.exit(stopped.exit_code)
    except RuntimeError as err:
        if not lost_peer(err):
            raise
        from segbench.train.checkpoint import resume_hint
        from segbench.train.distributed import job_run_dir
        from segbench.train.launch import LOST_PEER_EXIT, RUN_NOTE

        shared = job_run_dir(run_dir)  # ranks above 0 keep Hydra's files apart; the checkpoints are rank 0's
        last = shared / "checkpoints" / "last.pt"
        saved = f"resume it from {last} with {resume_hint(shared)}" if last.exists() else "no checkpoint was saved yet"
        if not os.environ.get(RUN_NOTE):  # segbench torchrun says it once for the job, with the resume command
            print(
                f"segbench: rank {os.environ.get('RANK', 0)} lost another rank during a collective "
                f"({one_line(err)[:160]}); {saved}",
                file=sys.stderr,
                flush=True,
            )
        os._exit(LOST_PEER_EXIT)  # the process group cannot be torn down without its lost member
    finally:
        from segbench.train.distributed import teardown

        teardown()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"run directory: {run_dir}")
    # What a sweeper optimises is the val metric: choosing on test would make test a val set.
    return float(metrics["val"]["best"].get(metrics["main_metric"], float("nan")))


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank is gone (DDP only)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return False
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        k in text for k in ("connection closed by peer", "connection reset by peer", "gloo", "nccl", "timed out")
    )


def _record_resume(cfg: DictConfig, hydra_cfg, run_dir: Path) -> None:
    """Keep the run's saved config and overrides describing it after a resume that changed trainer.*
    settings (checked already): the next resume then starts from them."""
    from omegaconf import OmegaConf

    from segbench.io import write_text

    saved = run_dir / ".hydra"
    if not saved.is_dir():
        return
    last = {}  # one override per key, the latest: a run resumed twice with max_steps=... keeps one
    for override in hydra_cfg.overrides.task:
        key = override.split("=", 1)[0]
        if not key.lstrip("+~").startswith(("hydra", "trainer.resume")):
            last.pop(key, None)
            last[key] = override
    task = list(last.values())
    write_text(saved / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(task)))
    resolved = OmegaConf.to_container(cfg, resolve=False)
    resolved["trainer"]["resume"] = False  # the saved config describes the run, not how it was continued
    write_text(saved / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))


def _close_log_files() -> None:
    """Let go of Hydra's app.log so a refused run's folder can be removed."""
    import logging

    for handler in logging.getLogger().handlers[:]:
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logging.getLogger().removeHandler(handler)


def _share_cores(cfg: DictConfig, hydra_cfg) -> None:
    """Under the joblib launcher, give each of the n_jobs parallel runs its share of the cores."""
    n_jobs = hydra_cfg.launcher.get("n_jobs") if "launcher" in hydra_cfg else None
    if cfg.trainer.get("threads") is None and n_jobs and n_jobs > 0:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(n_jobs)))
