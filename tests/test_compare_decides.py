"""`compare` decides: convergence flags, pairing by factor, planned seeds, TOST, Holm, both scopes.

Runs are written the way the trainer writes them (metrics.json, .hydra/, tb/), with chosen
numbers, so each rule is checked against known answers in a fraction of a second.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from segbench.analysis.compare import compare

CASES = [f"S{j:02d}" for j in range(6)]


def _run(
    folder,
    overrides: list[str],
    seed: int,
    dice: float,
    history: list[float],
    batch: int = 4,
    steps: int = 600,
    margin: float | None = 0.02,
    case_noise: float = 0.0,
    rng=None,
):
    folder.mkdir(parents=True)
    (folder / "tb").mkdir()
    hydra = folder / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    study = {"margin": margin} if margin is not None else {}
    (hydra / "config.yaml").write_text(yaml.safe_dump({"study": study, "seed": seed}))
    cases = {
        c: {"dice": [float(np.clip(dice + (rng.normal(0, case_noise) if rng is not None else 0.0), 0, 1))]}
        for c in CASES
    }
    every = steps // len(history)
    metrics = {
        "main_metric": "dice_tuned",
        "report_metric": "dice",
        "seed": seed,
        "norm": overrides[0].split("=")[1],
        "global_batch_size": batch,
        "steps": steps,
        "images_seen": steps * batch,
        "lr": 1e-3,
        "lr_applied": 5e-4,
        "val": {
            "best": {"dice_tuned": max(history)},
            "final": {"train_eval_loss": 0.01},
            "history": [{"step": every * (i + 1), "dice_tuned": v} for i, v in enumerate(history)],
        },
        "test": {
            "best": {"dice": float(np.mean([v["dice"][0] for v in cases.values()])), "per_case": cases},
            "last": {"dice": dice},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


FLAT = [0.5, 0.7, 0.8, 0.85, 0.86, 0.86, 0.861, 0.86]
RISING = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _read(out):
    return list(csv.DictReader((out / "paired.csv").open())), (out / "summary.md").read_text()


def test_equal_arms_are_called_equivalent_with_the_declared_margin(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(8):
        base = 0.85 + rng.normal(0, 0.02)
        _run(tmp_path / f"a{seed}", ["norm=batch"], seed, base + rng.normal(0, 0.002), FLAT)
        _run(tmp_path / f"b{seed}", ["norm=group"], seed, base + rng.normal(0, 0.002), FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert pairs[0]["verdict"] == "equivalent within ±0.02"
    assert "declared in the study's config" in text and "Holm" in text and "a new subject" in text
    assert float(pairs[0]["p_tost_holm"]) < 0.05 and pairs[0]["converged"] == "True"


def test_unconverged_arms_give_an_early_training_comparison(tmp_path):
    for seed in range(6):
        _run(tmp_path / f"a{seed}", ["norm=batch"], seed, 0.9 + 0.001 * seed, RISING)
        _run(tmp_path / f"b{seed}", ["norm=none"], seed, 0.7 + 0.001 * seed, FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert pairs[0]["verdict"].startswith("early-training comparison (not converged)")
    assert "| 0/6 |" in text and "| 6/6 |" in text  # the converged column per arm
    assert "**Runs not at their plateau**" in text and "- norm=batch: a0; a1; a2; a3; a4; a5" in text


def test_arms_pair_by_factor_and_holm_adjusts_a_family(tmp_path):
    rng = np.random.default_rng(1)
    for seed in range(6):
        base = 0.8 + rng.normal(0, 0.02)
        _run(
            tmp_path / f"tf1{seed}", ["norm=batch", "norm.momentum=0.001"], seed, base - 0.1 + rng.normal(0, 0.01), FLAT
        )
        _run(tmp_path / f"bn{seed}", ["norm=batch", "norm.momentum=0.1"], seed, base + 0.03 + rng.normal(0, 0.01), FLAT)
        _run(tmp_path / f"none{seed}", ["norm=none"], seed, base + rng.normal(0, 0.01), FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert len(pairs) == 3 and {p["differs_in"] for p in pairs} == {"norm"}
    tf1 = next(p for p in pairs if "0.001" in p["a"] + p["b"] and "none" in p["a"] + p["b"])
    assert tf1["verdict"] in ("a < b", "a > b")
    raw, adjusted = np.array([float(p["p"]) for p in pairs]), np.array([float(p["p_holm"]) for p in pairs])
    assert np.all(adjusted >= raw - 1e-12) and adjusted.max() <= 1
    assert "lr applied" in text and "0.0005" in text  # the lr the optimizer used, not the configured one


def test_noisy_arms_are_inconclusive_with_planned_seeds_and_clipped_intervals(tmp_path):
    for seed, (a, b) in enumerate([(0.95, 0.3), (0.2, 0.9)]):
        _run(tmp_path / f"a{seed}", ["norm=batch"], seed, a, FLAT)
        _run(tmp_path / f"b{seed}", ["norm=group"], seed, b, FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert pairs[0]["verdict"].startswith("inconclusive at 2 seeds")
    assert "paired seeds to detect a difference of 0.02" in text
    assert -1 <= float(pairs[0]["low"]) and float(pairs[0]["high"]) <= 1
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert all(0 <= float(r["test_dice_low"]) and float(r["test_dice_high"]) <= 1 for r in rows)
    assert "fewer than 5 paired seeds" in text


def test_a_failed_seed_is_named_and_the_budget_is_said(tmp_path):
    for seed in range(5):
        low = seed == 3
        hist = [0.2, 0.3, 0.35, 0.35, 0.35] if low else FLAT
        _run(tmp_path / f"a{seed}", ["data.batch_size=2"], seed, 0.4 if low else 0.85, hist, batch=2, steps=1200)
        _run(tmp_path / f"b{seed}", ["data.batch_size=16"], seed, 0.85, FLAT, batch=16, steps=150)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert "Failed seeds" in text and "seed 3" in text
    assert pairs[0]["budget"] == "equal images (2400)"


def test_the_new_subject_scope_is_wider_and_can_be_the_verdict(tmp_path):
    rng = np.random.default_rng(4)
    for seed in range(6):
        _run(tmp_path / f"a{seed}", ["norm=batch"], seed, 0.83 + rng.normal(0, 0.005), FLAT, case_noise=0.08, rng=rng)
        _run(tmp_path / f"b{seed}", ["norm=group"], seed, 0.80 + rng.normal(0, 0.005), FLAT, case_noise=0.08, rng=rng)
    out = compare([str(tmp_path)], str(tmp_path / "out"))
    text = (out / "summary.md").read_text()
    assert "subjects)" in text  # the crossed interval names how many subjects it rests on
    with pytest.raises(Exception, match="--margin"):
        compare([str(tmp_path)], str(tmp_path / "out2"), margin=-1.0)


def test_study_refuses_its_own_keys_and_a_bad_design_before_writing(tmp_path):
    from tests.test_cli import assert_one_line_error, segbench

    out = tmp_path / "study"
    assert_one_line_error(segbench("study", "norm=none,batch", "seed=3", "--out", str(out)), "seed=")
    assert_one_line_error(
        segbench("study", "norm=none,batch", "--out", str(out), "--first-seeds", "6", "--max-seeds", "4"), "max_seeds"
    )
    assert not out.exists()


@pytest.mark.slow
def test_study_adds_seeds_in_rounds_and_compare_reads_its_design(tmp_path, tiny_brats):
    from tests.conftest import TINY
    from tests.test_cli import segbench

    out = tmp_path / "study"
    result = segbench(
        "study",
        f"data.root={tiny_brats}",
        *TINY,
        "norm=none,batch",
        "--out",
        str(out),
        "--first-seeds",
        "2",
        "--seeds-per-round",
        "1",
        "--max-seeds",
        "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "look 1/2" in result.stdout and "comparisons decided" in result.stdout
    design = json.loads((out / "study.json").read_text())
    assert design["looks"] == 2 and (out / "round_1").is_dir()
    assert "sequential study: 2 looks planned" in (out / "summary.md").read_text()


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_test_every_subject_once_and_keep_sites_mixed(folds):
    from segbench.data.common import subject_split

    subjects = [f"S{i:02d}" for i in range(23)]
    sites = {s: f"site{i % 3}" for i, s in enumerate(subjects)}
    tests = [subject_split(subjects, "test", 0.2, 7, strata=sites, folds=folds, fold=k) for k in range(folds)]
    assert sorted(s for t in tests for s in t) == subjects  # each subject tested exactly once
    for k in range(folds):
        parts = [
            subject_split(subjects, split, 0.2, 7, strata=sites, folds=folds, fold=k)
            for split in ("train", "val", "test")
        ]
        assert set.union(*parts) == set(subjects) and sum(map(len, parts)) == len(subjects)
        assert len({sites[s] for s in parts[2]}) == 3
    with pytest.raises(Exception, match="data.fold=5"):
        subject_split(subjects, "test", 0.2, 7, folds=5, fold=5)


def test_compare_pools_a_seeds_folds_into_one_value(tmp_path):
    for seed in range(3):
        for fold, (a, b) in enumerate([(0.9, 0.8), (0.7, 0.6)]):
            _run(tmp_path / f"a{seed}{fold}", ["norm=batch", f"data.fold={fold}"], seed, a + 0.01 * seed, FLAT)
            _run(tmp_path / f"b{seed}{fold}", ["norm=group", f"data.fold={fold}"], seed, b + 0.01 * seed, FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert len(pairs) == 1 and int(pairs[0]["n"]) == 3  # seeds are the replicates, folds are not
    assert float(pairs[0]["diff"]) == pytest.approx(0.1)
    assert "3 x 2 folds" in text


def test_one_straggler_in_six_does_not_make_an_arm_early_training(tmp_path):
    for seed in range(6):
        _run(tmp_path / f"a{seed}", ["norm=batch"], seed, 0.9 + 0.001 * seed, RISING if seed == 0 else FLAT)
        _run(tmp_path / f"b{seed}", ["norm=none"], seed, 0.7 + 0.002 * seed, FLAT)
    pairs, text = _read(compare([str(tmp_path)], str(tmp_path / "out")))
    assert pairs[0]["converged"] == "True" and "| 5/6 |" in text
    assert pairs[0]["verdict"] == "a > b"


def test_a_check_stored_after_a_resume_is_made_again_on_the_whole_tensorboard_curve(tmp_path):
    """segbench before 2026-12-07 judged a resumed run on the validations after its resume only."""
    from segbench.analysis.runs import Run
    from segbench.analysis.verdicts import arm_converged, run_convergence
    from segbench.train.convergence import plateau

    # 16 validations, a jump at the 13th: the whole curve's last 4 gain 0.02 on the best before them;
    # the 8 after a resume at the half have k = 3, and their last 3 gain nothing on the 5 before.
    steps = np.arange(1, 17) * 250
    rising = np.concatenate([np.linspace(0.5, 0.85, 12), [0.87, 0.865, 0.868, 0.866]])
    after_resume = [{"step": int(s), "miou": float(v)} for s, v in zip(steps[8:], rising[8:])]
    stored = plateau(after_resume, "miou")
    assert stored["converged"] is True and stored["last_k"] == 3
    resumed = Run(tmp_path, {"main_metric": "miou", "convergence": stored}, {}, {}, {"val/miou": (steps, rising)})
    check = run_convergence(resumed)
    assert check["converged"] is False and check["validations"] == 16 and check["stored_check_validations"] == 8
    assert check["last_k"] == 4 and check["improvement_last_k"] == pytest.approx(0.02)
    # A run whose stored check saw every validation keeps it as stored.
    whole = plateau([{"step": int(s), "miou": float(v)} for s, v in zip(steps, rising)], "miou")
    intact = Run(
        tmp_path, {"main_metric": "miou", "convergence": {**whole, "marker": 1}}, {}, {}, {"val/miou": (steps, rising)}
    )
    assert run_convergence(intact)["marker"] == 1
    assert arm_converged([resumed, intact]) is False


def test_runs_named_inside_a_study_folder_are_judged_with_its_design(tmp_path):
    from segbench.analysis.study import DESIGN_FILE, read_design

    study = tmp_path / "study"
    run = study / "round_1" / "0_norm=none,seed=0"
    kept = tmp_path / "kept" / "0_norm=none,seed=0"
    for folder in (run, kept):
        folder.mkdir(parents=True)
    (study / DESIGN_FILE).write_text(json.dumps({"looks": 2, "alpha": 0.05}))
    (tmp_path / "kept" / DESIGN_FILE).write_text(json.dumps({"looks": 3, "alpha": 0.05}))
    assert read_design([str(study)])["looks"] == 2
    assert read_design([str(run)])["looks"] == 2  # two folders up
    assert read_design([str(kept)])["looks"] == 3  # one folder up
    assert read_design([str(tmp_path / "elsewhere")]) is None


@pytest.mark.slow
def test_compare_of_a_kept_study_record_is_unchanged_byte_for_byte(tmp_path):
    """compare's tables and verdicts on the record of section 4c's first look, as committed when the
    look was taken (before verdicts became typed): every byte the same."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "docs/results/fcn8s_bn_cosine_6000_4c"
    runs = sorted(str(p) for p in (root / "finished_runs").glob("*seed=180[0-3]"))
    done = subprocess.run(
        [sys.executable, "-m", "segbench", "compare", *runs, "--by", "norm", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    for name in ("verdicts.txt", "paired.csv", "summary.csv"):
        assert (tmp_path / name).read_bytes() == (root / "look1" / name).read_bytes(), name
