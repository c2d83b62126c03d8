"""hydra/sweeper=optuna: a search on val that resumes, scores a trial by its seeds' mean, refuses bad input."""

from __future__ import annotations

import json

import pytest

from segbench.errors import SegbenchError
from segbench.train.search import read_search
from tests.conftest import TINY
from tests.test_cli import segbench

optuna = pytest.importorskip("optuna", reason="hydra/sweeper=optuna is an extra: pip install 'segbench[optuna]'")

ONE_STEP = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))] + [
    "trainer.max_steps=1",
    "trainer.val_every=1",
]


def search(tiny_brats, out, trials, *extra, run=segbench):
    return run(
        "train",
        "-m",
        "hydra/sweeper=optuna",
        f"data.root={tiny_brats}",
        *ONE_STEP,
        "seed=0,1",
        *([] if any(e.startswith("optim.lr=") for e in extra) else ["optim.lr=tag(log, interval(1e-4, 1e-2))"]),
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={out}",
        *extra,
    )


def test_three_trials_then_the_same_command_resumes_the_study(tiny_brats, tmp_path):
    out = tmp_path / "search"
    result = search(tiny_brats, out, 3)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="segbench", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    members = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(members) == 6 and all(",seed=" in m and "optim.lr=" in m for m in members)  # 3 trials x 2 seeds
    for trial in study.trials:  # a trial's value: the mean of its seeds' best val Dice, never test
        runs = [p for p in out.iterdir() if p.name.startswith((f"{2 * trial.number}_", f"{2 * trial.number + 1}_"))]
        vals = [json.loads((r / "metrics.json").read_text())["val"]["best"]["dice_tuned"] for r in runs]
        assert len(vals) == 2 and trial.value == pytest.approx(sum(vals) / 2)
        assert all(f"optim.lr={trial.params['optim.lr']!r}" in r.name for r in runs)
    assert "optim.lr:" in (out / "optuna_best.yaml").read_text()

    # A search stopped while a trial ran: that trial is failed and run again; done trials stay.
    study.ask()
    again = search(tiny_brats, out, 4)
    assert again.returncode == 0, again.stderr[-3000:]
    states = [
        t.state.name for t in optuna.load_study(study_name="segbench", storage=f"sqlite:///{out / 'optuna.db'}").trials
    ]
    assert states == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    assert len([p for p in out.iterdir() if p.is_dir()]) == 8  # one more trial of two seeds, nothing re-trained


@pytest.mark.parametrize(
    "override, expected",
    [
        ("seed=interval(0,4)", "seed may not be searched"),
        ("optim.lr=interval(0.0, 0.01)", "reaches optim.lr=0.0, which must be a finite number above 0"),
        ("optim.lr=interval(0.01, 0.001)", "is empty"),
        (
            "optim.weight_decay=interval(-1.0, 0.0)",
            "reaches optim.weight_decay=-1.0, which must be a finite number at least 0",
        ),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be a positive whole number"),
        ("hydra.sweeper.sampler=grid", "hydra.sweeper.sampler='grid' is not valid; choose one of: tpe, random"),
        ("norm=batch,group", "an Optuna search tunes one arm"),
    ],
)
def test_bad_searches_are_one_line_exit_2_and_write_nothing(tiny_brats, tmp_path, override, expected, segbench_here):
    out = tmp_path / "search"
    result = search(tiny_brats, out, 2, override, run=segbench_here)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("segbench: error:") and expected in lines[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_params_from_a_config_file_join_the_command_line_search():
    search = read_search(["norm=group", "seed=0,1,2"], {"optim.weight_decay": "interval(0.0, 0.001)"})
    assert search.fixed == ["norm=group"] and search.seeds == ["0", "1", "2"]
    assert set(search.space) == {"optim.weight_decay"}
    assert search.ends()[0] == ["norm=group", "optim.weight_decay=0.0", "seed=0"]
    assert search.ends()[1] == ["norm=group", "optim.weight_decay=0.001", "seed=0"]
    lr = read_search(["optim.lr=tag(log, interval(1e-4, 1e-2))", "model.width=choice(4, 8)"]).space
    assert lr["optim.lr"].log and lr["optim.lr"].low == 1e-4 and lr["model.width"].choices == (4, 8)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"seed": "range(0, 4)"}, "seed may not be searched"),
        ({"optim.lr": "0.001"}, "is one value, not a search space"),
        ({"optim.lr": "interval(1e-4, "}, "is not Hydra's sweep grammar"),
    ],
)
def test_bad_params_in_a_config_file_are_one_line(params, expected):
    with pytest.raises(SegbenchError, match=expected):
        read_search(["seed=0"], params)
