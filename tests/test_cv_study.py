"""Paired contrasts by k-fold cross-validation, on fold runs written with known per-subject numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from segbench.analysis.cv_study import contrasts, markdown, write_table
from segbench.errors import SegbenchError
from tests.test_compare_decides import FLAT

SUBJECTS = [f"TCGA_CS_{i:04d}" for i in range(20)]


def _fold_run(folder, cause: str, seed: int, fold: int, folds: int, dice: dict, history=FLAT) -> None:
    """One fold's run of one arm: ``dice`` maps its test subjects to their Dice."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "tb").mkdir()
    overrides = [f"cause={cause}", f"data.folds={folds}", f"data.fold={fold}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"study": {"margin": 0.03}, "seed": seed, "data": {"folds": folds, "fold": fold}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    every = 600 // len(history)
    metrics = {
        "main_metric": "dice_tuned",
        "seed": seed,
        "norm": "batch" if cause != "none" else "none",
        "steps": 600,
        "val": {"history": [{"step": every * (i + 1), "dice_tuned": v} for i, v in enumerate(history)]},
        "test": {
            "best": {
                "dice": float(np.mean(list(dice.values()))),
                "per_case": {c: {"dice": [v]} for c, v in dice.items()},
            }
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _cv(root, shift: dict, seeds=(0,), folds: int = 5, skip=(), history=FLAT, rng=None) -> None:
    """Every arm of ``shift`` (its Dice offset from a per-subject base) over all folds and seeds."""
    rng = rng or np.random.default_rng(0)
    base = dict(zip(SUBJECTS, rng.uniform(0.3, 0.9, len(SUBJECTS))))
    for seed in seeds:
        fold_noise = rng.normal(0, 0.01, folds)  # a fold's trained net: shared by its subjects and arms
        for cause, offset in shift.items():
            for fold in range(folds):
                if (cause, seed, fold) in skip:
                    continue
                dice = {c: base[c] + offset + fold_noise[fold] + rng.normal(0, 0.005) for c in SUBJECTS[fold::folds]}
                _fold_run(root / f"{cause}_{seed}_{fold}", cause, seed, fold, folds, dice, history)


def test_each_arm_minus_the_reference_per_fold_in_one_holm_family(tmp_path):
    _cv(tmp_path, {"none": 0.0, "bn_pytorch": -0.002, "bn_tf1": -0.15})
    numbers = contrasts([str(tmp_path)], "cause=none")
    rows = {r["label"]: r for r in numbers["rows"]}
    tf1 = rows["cause=bn_tf1 − cause=none"]
    assert tf1["n"] == 5 and tf1["family"] == 2
    assert tf1["diff"] == pytest.approx(-0.15, abs=0.01)
    assert tf1["verdict"] == "cause=none higher than cause=bn_tf1"
    # the fold-level t-test is scipy's paired test on the five folds' mean differences
    assert tf1["p"] == pytest.approx(scipy_stats.ttest_1samp(tf1["diffs"], 0).pvalue, rel=1e-6)
    assert len(tf1["subject_diffs"]) == len(SUBJECTS)
    assert numbers["arms"]["cause=none"]["subjects"] == len(SUBJECTS)
    text = markdown(numbers)
    assert "Holm over the 2 contrasts" in text and "5 of 5" in text and "20 of 20" in text


def test_a_fold_tested_twice_or_missing_is_refused(tmp_path):
    _cv(tmp_path / "gap", {"none": 0.0, "bn_pytorch": 0.0}, skip={("bn_pytorch", 0, 3)})
    with pytest.raises(SegbenchError, match=r"cause=bn_pytorch, seed 0 has folds \[0, 1, 2, 4\]"):
        contrasts([str(tmp_path / "gap")], "cause=none")
    _cv(tmp_path / "twice", {"none": 0.0, "bn_pytorch": 0.0}, folds=2)
    run = tmp_path / "twice" / "none_0_1" / "metrics.json"
    metrics = json.loads(run.read_text())
    metrics["test"]["best"]["per_case"][SUBJECTS[0]] = {"dice": [0.5]}  # fold 0's subject, tested again
    run.write_text(json.dumps(metrics))
    with pytest.raises(SegbenchError, match=f"subject {SUBJECTS[0]} is tested by folds 0 and 1"):
        contrasts([str(tmp_path / "twice")], "cause=none")


def test_an_unknown_reference_names_the_arms_and_writes_nothing(tmp_path):
    _cv(tmp_path / "runs", {"none": 0.0, "bn_pytorch": 0.0})
    with pytest.raises(SegbenchError, match="the arms are: cause=bn_pytorch, cause=none"):
        write_table([str(tmp_path / "runs")], str(tmp_path / "out"), "cause=nothing")
    assert not (tmp_path / "out").exists()
    _cv(tmp_path / "one", {"none": 0.0})
    with pytest.raises(SegbenchError, match="the runs hold one arm: nothing to set against --reference cause=none"):
        contrasts([str(tmp_path / "one")], "cause=none")


def test_unconverged_arms_make_an_early_training_contrast(tmp_path):
    _cv(tmp_path, {"none": 0.0, "bn_tf1": -0.2}, history=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    (row,) = contrasts([str(tmp_path)], "cause=none")["rows"]
    assert row["early"] and not row["decided"] and "early-training" in row["verdict"]


def test_seeds_average_a_subject_before_the_bootstrap_and_add_fold_units(tmp_path):
    _cv(tmp_path, {"none": 0.0, "bn_pytorch": -0.05}, seeds=(0, 1))
    numbers = contrasts([str(tmp_path)], "cause=none")
    (row,) = numbers["rows"]
    assert row["n"] == 10  # (seed, fold) units
    assert numbers["arms"]["cause=none"]["subjects"] == len(SUBJECTS)  # not 40: one value a subject
    assert "seeds 0, 1" in markdown(numbers)


def test_a_metric_the_runs_do_not_score_per_subject_names_what_they_do(tmp_path):
    _cv(tmp_path, {"none": 0.0, "bn_pytorch": 0.0})
    with pytest.raises(SegbenchError, match="--metric auroc: .* has no per-subject auroc on test; it has: dice"):
        contrasts([str(tmp_path)], "cause=none", metric="auroc")
