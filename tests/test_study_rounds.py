"""`segbench study` declares its design before a seed runs, continues where it was stopped, and
refuses a command whose design differs from the recorded one.

The rounds' ``train -m`` commands are replaced by a stand-in that writes finished runs with chosen
numbers (as tests/test_compare_decides.py does), so the sequential loop, the design file and the
verdicts are checked in well under a second per study.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from segbench.analysis import study as study_module
from segbench.analysis.study import DESIGN_FILE, run_study
from segbench.errors import SegbenchError
from tests.test_compare_decides import FLAT, _run

OVERRIDES = ["experiment=why_bn_failed", "norm=none,batch"]


class Rounds:
    """Stands in for ``subprocess.run`` of the rounds: records each command, writes its members'
    runs (BN ahead of no BN by ``effect`` plus seed noise), and can fail a chosen round."""

    def __init__(self, out, effect: float = 0.0, fail_round: int | None = None):
        self.out, self.effect, self.fail_round = out, effect, fail_round
        self.commands: list[list[str]] = []
        self.design_before_first_round: bool | None = None

    def __call__(self, cmd, **_):
        if "--check" in cmd:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        self.commands.append(cmd)
        if self.design_before_first_round is None:
            self.design_before_first_round = (self.out / DESIGN_FILE).is_file()
        target = next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.sweep.dir="))
        seeds = [int(s) for s in next(a for a in cmd if a.startswith("seed=")).split("=", 1)[1].split(",")]
        number = int(re.search(r"round_(\d+)$", target).group(1))
        for i, (norm, seed) in enumerate((n, s) for n in ("none", "batch") for s in seeds):
            member = self.out / f"round_{number}" / f"{i}_norm={norm},seed={seed}"
            if member.exists():  # a finished member is left as it is, as `train -m` leaves it
                continue
            if number == self.fail_round and i == len(seeds):  # stopped half-way through the round
                self.fail_round = None
                return subprocess.CompletedProcess(cmd, 1, "", "")
            noise = np.random.default_rng([seed, i >= len(seeds)]).normal(0, 0.01)
            dice = 0.85 + noise + (self.effect if norm == "batch" else 0.0)
            _run(member, [f"norm={norm}"], seed, dice, FLAT)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def _study(out, monkeypatch, rounds, **design):
    monkeypatch.setattr(study_module.subprocess, "run", rounds)
    kwargs = {"first": 3, "per_round": 2, "max_seeds": 7, "start_seed": 40, "margin": 0.02} | design
    return run_study(OVERRIDES, str(out), **kwargs)


def test_the_design_is_written_before_the_first_seed_runs(tmp_path, monkeypatch):
    out = tmp_path / "study"
    rounds = Rounds(out, effect=0.05)
    verdicts = _study(out, monkeypatch, rounds)
    assert rounds.design_before_first_round is True
    design = json.loads((out / DESIGN_FILE).read_text())
    assert design == {
        "first": 3,
        "per_round": 2,
        "max_seeds": 7,
        "start_seed": 40,
        "looks": 3,
        "alpha": 0.05,
        "margin": 0.02,
        "overrides": OVERRIDES,
    }
    assert len(rounds.commands) == 1  # a difference of 0.05 against noise of 0.01: decided at the first look
    assert verdicts[0]["decided"] and verdicts[0]["n"] == 3


def test_a_stopped_study_continues_with_the_same_command_and_the_same_seeds(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    uninterrupted = _study(whole, monkeypatch, Rounds(whole, effect=0.004))
    stopped = tmp_path / "stopped"
    first = Rounds(stopped, effect=0.004, fail_round=2)
    with pytest.raises(SegbenchError, match="the same command continues the study"):
        _study(stopped, monkeypatch, first)
    again = Rounds(stopped, effect=0.004)
    resumed = _study(stopped, monkeypatch, again)
    assert "continuing the study declared in" in capsys.readouterr().out
    seeds = lambda cmds: [next(a for a in c if a.startswith("seed=")) for c in cmds]  # noqa: E731
    assert seeds(again.commands)[:2] == seeds(first.commands)  # round 1 read again, round 2 continued
    assert [v["n"] for v in resumed] == [v["n"] for v in uninterrupted]
    assert [v["verdict"] for v in resumed] == [v["verdict"] for v in uninterrupted]
    assert resumed[0]["diff"] == pytest.approx(uninterrupted[0]["diff"])


@pytest.mark.parametrize(
    "change, key",
    [
        ({"max_seeds": 11}, "max_seeds"),
        ({"per_round": 4}, "per_round"),
        ({"start_seed": 0}, "start_seed"),
        ({"margin": 0.05}, "margin"),
    ],
)
def test_another_design_in_the_same_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, change, key):
    out = tmp_path / "study"
    _study(out, monkeypatch, Rounds(out, effect=0.05))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rounds = Rounds(out, effect=0.05)
    with pytest.raises(SegbenchError, match=rf"declares {key}=.*this command {key}="):
        _study(out, monkeypatch, rounds, **change)
    assert rounds.commands == [] and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_first_round_that_fails_its_check_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "study"

    def refuse(cmd, **_):
        assert "--check" in cmd
        return subprocess.CompletedProcess(
            cmd, 2, "", "segbench: error: norm='bogus' is not valid; choose one of: batch\n"
        )

    monkeypatch.setattr(study_module.subprocess, "run", refuse)
    with pytest.raises(SegbenchError, match=r"^norm='bogus' is not valid"):
        run_study(["norm=none,bogus"], str(out), first=2, per_round=1, max_seeds=3, margin=0.02)
    assert not out.exists()
