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
    assert "**Reproduce the symptom (predicts worse)**: BN, TF1's defaults" in causes.answer_lines(numbers)[0]
