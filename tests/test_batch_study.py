"""The batch-size study's planned contrasts, on runs written with known numbers."""

from __future__ import annotations

import numpy as np
import pytest

from segbench.analysis.batch_study import CHALLENGERS, contrasts, markdown, write_table
from segbench.errors import SegbenchError
from tests.test_compare_decides import FLAT, _run

TRUTH = {
    ("none", 2): 0.86,
    ("none", 16): 0.86,
    ("batch", 2): 0.78,
    ("batch", 16): 0.90,
    ("group", 2): 0.88,
    ("group", 16): 0.89,
}


def _sweep(folder, seeds: int, dice_of, history_of=lambda batch: FLAT) -> None:
    """One run per TRUTH arm and seed; ``dice_of(true dice, seed)`` is the run's test Dice."""
    for (norm, batch), dice in TRUTH.items():
        for seed in range(seeds):
            _run(
                folder / f"{norm}_{batch}_{seed}",
                [f"norm={norm}", f"data.batch_size={batch}"],
                seed,
                dice_of(dice, seed),
                history_of(batch),
                batch=batch,
            )


def test_small_batch_bn_deficit_is_found_and_the_rest_judged_in_one_family(tmp_path):
    rng = np.random.default_rng(0)
    _sweep(tmp_path, 8, lambda dice, seed: dice + rng.normal(0, 0.004))
    numbers = contrasts([str(tmp_path)])
    rows = {r["label"]: r for r in numbers["rows"]}
    assert len(rows) == 7 and all(r["family"] == 7 for r in rows.values())
    assert rows["BN − GN at the small batch"]["verdict"].startswith("held")
    assert abs(rows["BN − GN at the small batch"]["diff"] - (0.78 - 0.88)) < 0.01
    assert rows["BN small batch − BN large batch"]["verdict"].startswith("held")
    assert abs(rows["interaction: (BN − GN) large − (BN − GN) small"]["diff"] - ((0.90 - 0.89) - (0.78 - 0.88))) < 0.01
    assert rows["BN − GN at the large batch"]["verdict"].startswith("held")  # +0.01 with seed sd 0.006
    assert rows["BN − no norm at the large batch"]["verdict"] == "BN higher than no norm"  # no claimed direction
    text = markdown(numbers)
    assert "batch bs=2" in text and "8/8" in text


def test_unconverged_arms_are_never_judged(tmp_path):
    rising = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    _sweep(tmp_path, 6, lambda dice, seed: dice + 0.001 * seed, lambda batch: rising if batch == 16 else FLAT)
    rows = {r["label"]: r for r in contrasts([str(tmp_path)])["rows"]}
    assert rows["BN − GN at the large batch"]["verdict"].startswith("early-training")


@pytest.mark.parametrize("challenger", sorted(CHALLENGERS))
def test_any_challenger_is_set_against_bn_across_two_sweeps(tmp_path, challenger):
    """A newcomer at batch 2 in one sweep and batch 16 in another: its contrasts only, named for it."""
    truth = {("batch", 2): 0.90, ("batch", 16): 0.88, (challenger, 2): 0.86, (challenger, 16): 0.88}
    rng = np.random.default_rng(1)
    for (norm, batch), dice in truth.items():
        for seed in range(6):
            _run(
                tmp_path / f"bs{batch}" / f"{norm}_{seed}",
                [f"norm={norm}", f"data.batch_size={batch}"],
                seed,
                dice + rng.normal(0, 0.003),
                FLAT,
                batch=batch,
            )
    numbers = contrasts([str(tmp_path / "bs2"), str(tmp_path / "bs16")], challenger=challenger)
    name = CHALLENGERS[challenger][0]
    rows = {r["label"]: r for r in numbers["rows"]}
    assert set(rows) == {
        f"BN − {name} at the small batch",
        f"BN − {name} at the large batch",
        f"interaction: (BN − {name}) large − (BN − {name}) small",
        "BN small batch − BN large batch",
    }
    assert all(r["family"] == 4 for r in rows.values())  # the no-norm contrasts are not in the family
    small = rows[f"BN − {name} at the small batch"]
    assert abs(small["diff"] - 0.04) < 0.01 and small["verdict"].startswith("did not hold")
    assert abs(rows[f"interaction: (BN − {name}) large − (BN − {name}) small"]["diff"] - (0.0 - 0.04)) < 0.01


def test_an_unknown_challenger_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SegbenchError, match="challenger='frm' is not valid; choose one of: evonorm_s0, frn"):
        write_table([str(tmp_path)], str(out), challenger="frm")
    assert not out.exists()


def test_planned_looks_lower_the_level_and_say_so(tmp_path):
    rng = np.random.default_rng(3)
    _sweep(tmp_path, 3, lambda dice, seed: dice + rng.normal(0, 0.02))
    once, thrice = contrasts([str(tmp_path)]), contrasts([str(tmp_path)], looks=3)
    assert [r["p_holm"] for r in once["rows"]] == [r["p_holm"] for r in thrice["rows"]]
    assert {r["level"] for r in thrice["rows"]} == {0.05 / 3}
    for row in thrice["rows"]:
        if row["verdict"].startswith(("held", "did not hold")):
            assert row["p_holm"] < 0.05 / 3
    assert "alpha 0.05 over 3 planned looks" in markdown(thrice)
    with pytest.raises(ValueError, match="looks"):
        contrasts([str(tmp_path)], looks=0)
