"""Where a run's numbers go: TensorBoard always, and the trackers ``logger=`` adds beside it.

A tracker is a class with the methods of ``Tracker``; ``register_tracker("wandb", WandbTracker)``
makes ``logger.names=[tensorboard,wandb]`` use it. TensorBoard is always one of them because
``segbench compare`` reads its events. Only the main rank tracks (``open_trackers`` is called there).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError, invalid_choice
from segbench.schema import flatten
from segbench.train import hparams


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told when a run opens."""

    run_dir: Path
    cfg: DictConfig
    start: int  # 0 for a fresh start, else the step a resumed run continues from
    world_size: int
    main_metric: str  # chosen on (val/<main_metric>)
    report_metric: str  # reported (test_best/<report_metric>)


class Tracker:
    """One destination of a run's numbers; every method but ``scalar`` may be left as it is."""

    def __init__(self, info: RunInfo) -> None:
        self.info = info

    def scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def images(self, tag: str, images, step: int) -> None:
        """``images``: an (N, 3, H, W) float tensor in [0, 1] (validation overlays)."""

    def finish(self, metrics: dict) -> None:
        """The run ended normally; ``metrics`` is what it wrote to metrics.json."""

    def close(self) -> None:
        """Called once, after ``finish`` or instead of it (a stop, a failure)."""


class TensorBoardTracker(Tracker):
    def __init__(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(info)
        tb = info.run_dir / "tb"
        if not info.start:  # a start killed before its first checkpoint left events nothing can continue
            for stale in tb.glob("events.out.tfevents.*"):
                stale.unlink()
        # purge_step drops events a killed run logged after its last checkpoint, so the curve continues cleanly.
        self.writer = SummaryWriter(str(tb), purge_step=info.start + 1 if info.start else None)
        if not info.start:  # a resumed run's session was opened by its first start
            hparams.write_start(self.writer, info.cfg, info.world_size, info.main_metric, info.report_metric)
            hparams.write_layout(self.writer, info.main_metric, info.report_metric)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def images(self, tag: str, images, step: int) -> None:
        self.writer.add_images(tag, images, step)

    def finish(self, metrics: dict) -> None:
        hparams.write_end(self.writer)

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """MLflow through its client (not the fluent API, whose one active run per process packed seeds
    would share): the config as params, every scalar as a metric at its step, checkpoints and
    metrics.json as artifacts. With no ``tracking_uri`` the store is SQLite in the run folder, so
    no server is needed (MLflow 3 refuses new file stores). A resumed run continues its MLflow run;
    values logged after the last checkpoint stay there (MLflow cannot delete them; TensorBoard's are purged).
    """

    BATCH = 1000  # metrics per log_batch call, MLflow's own limit
    RECORD = "mlflow.json"

    def __init__(self, info: RunInfo) -> None:
        super().__init__(info)
        from mlflow.tracking import MlflowClient

        settings = info.cfg.logger.get("mlflow") or {}
        local = not settings.get("tracking_uri")
        self.uri = f"sqlite:///{(info.run_dir / 'mlflow.db').resolve()}" if local else str(settings.tracking_uri)
        self.client = MlflowClient(self.uri)
        record = info.run_dir / self.RECORD
        previous = json.loads(record.read_text()) if info.start and record.is_file() else {}
        if previous.get("tracking_uri") == self.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._create(info, str(settings.get("experiment") or "segbench"), local)
            record.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
        self.pending: list = []
        self.finished = False

    def _create(self, info: RunInfo, name: str, local: bool) -> str:
        from mlflow.entities import Param

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = (info.run_dir / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(
            experiment_id, run_name=info.run_dir.name, tags={"segbench.run_dir": str(info.run_dir.resolve())}
        )
        params = [Param(k, str(v)[:6000]) for k, v in flatten(OmegaConf.to_container(info.cfg, resolve=True)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    def scalar(self, tag: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(tag, float(value), int(time.time() * 1000), int(step)))
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []

    def finish(self, metrics: dict) -> None:
        self._flush()
        settings = self.info.cfg.logger.get("mlflow") or {}
        if settings.get("artifacts", True):
            for path in (self.info.run_dir / "checkpoints" / "best.pt", self.info.run_dir / "checkpoints" / "last.pt"):
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), "checkpoints")
            if (self.info.run_dir / "metrics.json").is_file():
                self.client.log_artifact(self.run_id, str(self.info.run_dir / "metrics.json"))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        self._flush()
        if not self.finished:  # stopped or failed; a resume sets it running again
            self.client.set_terminated(self.run_id, "KILLED")


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
NEEDS = {"mlflow": ("mlflow", "pip install 'segbench[mlflow]' (or pip install mlflow-skinny)")}


def register_tracker(name: str, cls: type[Tracker], module: str | None = None, install: str | None = None) -> None:
    """Add a tracker; ``module``/``install``: the import it needs and how to get it, checked before a run."""
    TRACKERS[name] = cls
    if module:
        NEEDS[name] = (module, install or f"pip install {module}")


def tracker_names(cfg: DictConfig) -> list[str]:
    node = cfg.get("logger")
    return list(node.get("names") or ["tensorboard"]) if node is not None else ["tensorboard"]


def check_trackers(cfg: DictConfig) -> None:
    """One line for an unknown tracker, a list without TensorBoard, or a tracker's missing package."""
    import importlib.util

    names = tracker_names(cfg)
    for name in names:
        if name not in TRACKERS:
            raise invalid_choice("logger.names", name, tuple(TRACKERS))
    if "tensorboard" not in names:
        raise SegbenchError(f"logger.names={names} must include tensorboard: segbench compare reads its events")
    for name in names:
        module, install = NEEDS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise SegbenchError(f"logger {name} needs the {module} package: {install}")


class Trackers:
    """The run's trackers as one: each call goes to every one of them."""

    def __init__(self, info: RunInfo) -> None:
        self.members = [TRACKERS[name](info) for name in dict.fromkeys(tracker_names(info.cfg))]
        self.closed = False

    def scalar(self, tag: str, value: float, step: int) -> None:
        for member in self.members:
            member.scalar(tag, value, step)

    def images(self, tag: str, images, step: int) -> None:
        for member in self.members:
            member.images(tag, images, step)

    def finish(self, metrics: dict) -> None:
        for member in self.members:
            member.finish(metrics)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for member in self.members:
                member.close()
