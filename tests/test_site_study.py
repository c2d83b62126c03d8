"""The scanner-shift study's planned contrasts, on runs written with known numbers."""

from __future__ import annotations

import json

import numpy as np
import yaml

from segbench.analysis.site_study import PER_SITE, contrasts, markdown
from tests.test_compare_decides import FLAT, RISING, _run

SITES = ("site0", "site1", "site2")
TRUTH = {"batch": 0.70, "instance": 0.80, "group": 0.701, "layer": 0.70, "frn": 0.60}


def _shift_run(folder, norm, seed, site, dice, history=FLAT, site_batches=False, adapted=None):
    _run(folder, [f"norm={norm}", f"data.test_sites=[{site}]"], seed, dice, history)
    config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    config["data"] = {"test_sites": [site], "site_batches": site_batches}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if adapted:
        methods = {m: {"dice": v} for m, v in {"none": dice, **adapted}.items()}
        (folder / "adapt.json").write_text(json.dumps({"metric": "dice", "methods": methods}))


def _study(tmp_path, history_of=lambda norm: FLAT):
    rng = np.random.default_rng(1)
    for seed in range(4):
        for k, site in enumerate(SITES):
            unit = rng.normal(0, 0.03) + 0.02 * k  # the unit's own level, shared by every arm
            for norm, dice in TRUTH.items():
                adapted = (
                    {
                        "adabn": dice + 0.10 + unit + rng.normal(0, 0.003),
                        "tent": dice + 0.001 + unit + rng.normal(0, 0.003),
                    }
                    if norm == "batch"
                    else None
                )
                _shift_run(
                    tmp_path / f"{norm}_{seed}_{site}",
                    norm,
                    seed,
                    site,
                    dice + unit + rng.normal(0, 0.003),
                    history_of(norm),
                    adapted=adapted,
                )
            _shift_run(
                tmp_path / f"sitebn_{seed}_{site}",
                "batch",
                seed,
                site,
                0.72 + unit,
                site_batches=True,
                adapted={"site_bn": 0.85 + unit + rng.normal(0, 0.003)},
            )
    return contrasts([str(tmp_path)])


def test_contrasts_pair_by_seed_and_held_out_site_in_one_family(tmp_path):
    numbers = _study(tmp_path)
    rows = {r["label"]: r for r in numbers["rows"]}
    assert len(rows) == 8 and all(r["family"] == 8 and r["n"] == 12 for r in rows.values())
    assert rows["IN − BN"]["verdict"].startswith("held") and abs(rows["IN − BN"]["diff"] - 0.10) < 0.01
    assert rows["BN + AdaBN − BN"]["verdict"].startswith("held")
    assert rows["FRN − BN"]["verdict"].startswith("did not hold")
    assert rows["GN − BN"]["verdict"] == "equivalent within ±0.02"
    assert rows[f"{PER_SITE} − BN + AdaBN"]["verdict"].startswith("held")
    assert abs(rows[f"{PER_SITE} − BN + AdaBN"]["diff"] - (0.85 - 0.80)) < 0.01
    assert numbers["sites"] == list(SITES)
    text = markdown(numbers)
    assert "held-out site0" in text and "scope: these held-out sites" in text
    assert "BN, one-site batches" in text  # the site-batch runs with their training statistics, shown


def test_an_unconverged_arm_is_never_judged(tmp_path):
    numbers = _study(tmp_path, history_of=lambda norm: RISING if norm == "frn" else FLAT)
    rows = {r["label"]: r for r in numbers["rows"]}
    assert rows["FRN − BN"]["verdict"].startswith("early-training")
    assert rows["IN − BN"]["verdict"].startswith("held")


def test_planned_looks_judge_each_contrast_at_alpha_over_looks(tmp_path):
    once = _study(tmp_path)
    twice = contrasts([str(tmp_path)], looks=2)
    for one, two in zip(once["rows"], twice["rows"]):
        assert one["p_holm"] == two["p_holm"] and one["level"] == 0.05 and two["level"] == 0.025
        if two["verdict"].startswith(("held", "did not hold")):
            assert two["p_holm"] < 0.025
    assert "over 2 planned looks" in markdown(twice) and "planned looks" not in markdown(once)
