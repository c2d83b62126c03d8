"""``segbench bench`` prints its figures as JSON (a smoke run on tiny settings; no timing is asserted)."""

from __future__ import annotations

import json

from tests.test_cli import segbench


def test_bench_prints_both_ratios(tiny_brats):
    result = segbench("bench", "--data", str(tiny_brats), "--width", "4", "--depth", "2", "--size", "32", "32",
                      "--batch-size", "2", "--steps", "1", "--rounds", "1", "--loop-steps", "2", "--loop-rounds", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["trainer_loop"]["ratio_trainer_over_bare"] > 0
    assert report["loader"]["ratio_loader_over_training"] > 0
    assert set(report["per_norm"]["images_per_s"]) >= {"none", "batch", "group", "adain", "spade"}
    assert set(report["precision"]["images_per_s"]) == {"32", "bf16-mixed", "bf16-mixed channels_last"}
    assert report["precision"]["relative_to_fp32"]["32"] == 1.0
