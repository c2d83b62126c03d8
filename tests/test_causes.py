"""The cause table of ``experiment=why_bn_failed`` on runs with chosen numbers: each trained cause
against its no-BN twin, Holm over the family, and a study of the trained causes alone (no
``diagnose`` runs, no eval-only rows)."""

from __future__ import annotations

import numpy as np
import pytest

from segbench.analysis import causes
from tests.test_compare_decides import FLAT, _run


def _sweep(tmp_path, worse_by: dict[str, float], seeds: int = 6):
    rng = np.random.default_rng(3)
    for seed in range(seeds):
        base = 0.95 + rng.normal(0, 0.01)
        for arm in ("none", *worse_by):
            dice = base - worse_by.get(arm, 0.0) + rng.normal(0, 0.002)
            _run(tmp_path / f"{arm}{seed}", [f"cause={arm}"], seed, dice, FLAT, steps=2400)


def test_trained_causes_alone_form_the_family_and_need_no_diagnose(tmp_path, monkeypatch):
    _sweep(tmp_path, {"bn_pytorch": 0.0, "bn_tf1": 0.1})
    monkeypatch.setattr(causes, "diagnose", lambda *a, **k: pytest.fail("diagnose ran"))
    text, numbers = causes.cause_table(str(tmp_path), eval_causes=False)
    rows = {r["arm"]: r for r in numbers["rows"]}
    assert set(rows) == {"bn_pytorch", "bn_tf1"}  # no batch-statistics rows, no diagnose lines
    assert rows["bn_tf1"]["worse"]["verdict"] == "held"
    assert rows["bn_pytorch"]["worse"]["verdict"] == "equivalent within ±0.02"
    # Holm over the two: the smaller raw p doubled (within the family's step-down)
    p = sorted(r["worse"]["p"] for r in rows.values())
    assert rows["bn_tf1"]["worse"]["p_holm"] == pytest.approx(min(1.0, 2 * p[0]))
    assert "diagnose" not in text and "6-6 paired seeds per arm, 2400 steps" in text
    none = [line for line in text.splitlines() if line.startswith("| none | 6 | ")]  # each arm's own Dice
    values = [float(v) for v in none[0].split("|")[4].split(",")]
    assert len(values) == 6 and f"{np.mean(values):.3f} [" in none[0]
    assert "**Reproduce the symptom (predicts worse)**: BN, TF1's defaults" in causes.answer_lines(numbers)[0]


def test_a_trained_batch_statistics_arm_is_a_row_and_diagnose_can_run_without_derived_rows(tmp_path, monkeypatch):
    _sweep(tmp_path, {"bn_pytorch": 0.0, "bn_batch_stats_at_eval": 0.2})
    named = {"bn_pytorch": "healthy", "bn_batch_stats_at_eval": "batch_stats_at_eval"}
    monkeypatch.setattr(
        causes,
        "diagnose_all",
        lambda runs, missing: {
            str(r.path): {"cause": named[causes._cause(r)]} for r in runs if causes._cause(r).startswith("bn_")
        },
    )
    text, numbers = causes.cause_table(str(tmp_path), eval_causes=False, diagnoses=True)
    rows = {r["arm"]: r for r in numbers["rows"]}
    assert set(rows) == {"bn_pytorch", "bn_batch_stats_at_eval"}  # the declared family, no derived rows
    assert rows["bn_batch_stats_at_eval"]["worse"]["verdict"] == "held"
    assert numbers["hit_rate"]["bn_batch_stats_at_eval"]["right"] == 6
    assert "bn_batch_stats_at_eval (expected `batch_stats_at_eval`): named right 6" in text


def test_segbench_report_writes_the_cause_table(tmp_path):
    import subprocess
    import sys

    _sweep(tmp_path / "sweep", {"bn_tf1": 0.1})
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segbench",
            "report",
            "causes",
            str(tmp_path / "sweep"),
            "--out",
            str(out),
            "--trained-causes-only",
            "--no-diagnose",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "causes.md").read_text() in done.stdout + "\n" and "| BN, TF1's defaults" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "segbench", "report", "causes", str(tmp_path / "nowhere"), "--out", str(out / "x")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "nowhere" in missing.stderr and not (out / "x").exists()


def test_a_sequential_studys_round_is_judged_at_alpha_over_its_looks(tmp_path, monkeypatch):
    import json

    _sweep(tmp_path / "round_1", {"bn_tf1": 0.1})
    fixed, _ = causes.cause_table(str(tmp_path / "round_1"), eval_causes=False)
    (tmp_path / "study.json").write_text(json.dumps({"alpha": 0.05, "looks": 3, "first": 4}))
    seen = {}
    real = causes.decide_family

    def spy(diffs, design, *rest):
        seen["level"] = design.level
        return real(diffs, design, *rest)

    monkeypatch.setattr(causes, "decide_family", spy)
    text, _ = causes.cause_table(str(tmp_path / "round_1"), eval_causes=False)
    assert seen["level"] == pytest.approx(0.05 / 3)
    assert "judged at alpha/3" in text and "alpha/3" not in fixed


def test_diagnosed_only_counts_the_diagnoses_written_and_runs_none(tmp_path, monkeypatch, segbench_here):
    _sweep(tmp_path / "sweep", {"bn_pytorch": 0.0})
    asked = []

    def already_written(runs, missing):
        asked.append(missing)
        first = next(r for r in runs if causes._cause(r) == "bn_pytorch")  # the one run diagnosed before
        return {str(first.path): {"cause": "healthy"}}

    monkeypatch.setattr(causes, "diagnose_all", already_written)
    done = segbench_here(
        "report", "causes", str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--trained-causes-only",
        "--diagnosed-only",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert asked == [False] and "named right 1, named wrong 0, said nothing clear 0 of 1" in done.stdout
    refused = segbench_here(
        "report", "causes", str(tmp_path / "sweep"), "--out", "x", "--diagnosed-only", "--no-diagnose"
    )
    assert refused.returncode == 2 and "--diagnosed-only" in refused.stderr and not (tmp_path / "x").exists()
