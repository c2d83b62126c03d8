"""``hydra/sweeper=optuna``: an Optuna search of one arm's hyperparameters on val, resumable.

    segbench train -m hydra/sweeper=optuna norm=group data.batch_size=2 seed=0,1 \\
        optim.lr='tag(log, interval(1e-4, 1e-2))' hydra.sweep.dir=runs/lr_gn

Each trial trains every seed given on the command line (``seed=0,1``) and scores the mean of their
best *val* metric (what a run returns; the test split is never read), so seed noise is averaged
rather than selected: the seed is not a hyperparameter and cannot be searched. The other keys are
fixed: one search per arm (tune each norm's own learning rate, then compare the arms on fresh
seeds); what is searched, and what is refused, is read by ``segbench.train.search``.
The study lives in ``storage`` (default: SQLite in the sweep folder) and ``n_trials``
counts the trials it already holds, so the same command again continues an interrupted search;
a trial that was running when it stopped is marked failed and run afresh. Jobs go through
``hydra/launcher`` (``parallel`` for joblib, ``packed`` to train a trial's seeds in one process).

Hydra's own ``hydra-optuna-sweeper`` pins optuna<3, which needs SQLAlchemy<2: it cannot share an
environment with MLflow 3, hence this one. The search space takes the same grammar it does, on the
command line or in ``hydra.sweeper.params``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from hydra.plugins.sweeper import Sweeper

SWEPT_KEYS_ENV = "SEGBENCH_SWEPT_KEYS"  # segbench.train.app's: which keys name a member's folder

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")


def _refuse(message: str) -> None:
    sys.stderr.flush()
    print(f"segbench: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        params=None,
        n_trials: int = 20,
        n_jobs: int = 1,
        direction: str = "maximize",
        study_name: str = "segbench",
        storage: str | None = None,
        sampler: str = "tpe",
        sampler_seed: int = 0,
    ) -> None:
        super().__init__()
        # Checked before anything is written: one line and exit 2, as every bad input of segbench.
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _refuse(f"hydra.sweeper.{name}={value!r} must be a positive whole number")
        if direction not in DIRECTIONS:
            _refuse(f"hydra.sweeper.direction={direction!r} is not valid; choose one of: {', '.join(DIRECTIONS)}")
        if sampler not in SAMPLERS:
            _refuse(f"hydra.sweeper.sampler={sampler!r} is not valid; choose one of: {', '.join(SAMPLERS)}")
        self.params = dict(params or {})
        self.n_trials, self.n_jobs, self.direction = n_trials, n_jobs, direction
        self.study_name, self.storage, self.sampler, self.sampler_seed = study_name, storage, sampler, sampler_seed
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]):
        import optuna

        from segbench.errors import SegbenchError
        from segbench.train.search import read_search

        try:
            search = read_search(list(arguments), self.params)
        except SegbenchError as err:
            _refuse(str(err))
        fixed, seeds = search.fixed, search.seeds
        # Trial folders named by what is searched and the seed: 3_optim.lr=0.00123,seed=1
        os.environ[SWEPT_KEYS_ENV] = ",".join([*search.space, "seed"])
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        sampler = (
            optuna.samplers.TPESampler(seed=self.sampler_seed)
            if self.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=self.sampler_seed)
        )
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, sampler=sampler, direction=self.direction, load_if_exists=True
        )
        for trial in study.trials:  # running when the search stopped: it never reported
            if trial.state == optuna.trial.TrialState.RUNNING:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                log.info(
                    "trial %d was running when the search stopped; marked failed, its settings run again "
                    "as a new trial",
                    trial.number,
                )
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        log.info(
            "Optuna study %r in %s: %d of %d trials complete; %s on val, seeds %s per trial",
            self.study_name,
            storage,
            done,
            self.n_trials,
            self.direction,
            ",".join(seeds) or "(the config's)",
        )
        per_trial = seeds or [None]
        while done < self.n_trials:
            trials = [study.ask(search.space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            jobs = [
                [
                    *fixed,
                    *(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
                    *([f"seed={s}"] if s is not None else []),
                ]
                for t in trials
                for s in per_trial
            ]
            returns = self.launcher.launch(jobs, initial_job_idx=trials[0].number * len(per_trial))
            for i, trial in enumerate(trials):
                scores = [_score(r) for r in returns[i * len(per_trial) : (i + 1) * len(per_trial)]]
                if all(math.isfinite(s) for s in scores):
                    study.tell(trial, sum(scores) / len(scores))
                    done += 1
                else:  # a seed failed or diverged: the mean would hide it
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    log.info("trial %d failed (a seed's run failed or gave no val metric)", trial.number)
        best = study.best_trial
        log.info(
            "best trial %d: %s, mean val %.4g over %d seed(s)",
            best.number,
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()),
            best.value,
            len(per_trial),
        )
        (sweep_dir / "optuna_best.yaml").write_text(
            "".join(f"{k}: {v!r}\n" for k, v in best.params.items()) + f"# mean best val over seeds {','.join(seeds)}: "
            f"{best.value:.6g}, trial {best.number} of {len(study.trials)} in {storage}\n"
        )
        return returns


def _score(ret) -> float:
    try:
        value = ret.return_value  # raises for a failed job
    except Exception:  # noqa: BLE001
        return float("nan")
    return float(value) if isinstance(value, (int, float)) else float("nan")
