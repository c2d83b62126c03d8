"""``segbench bench`` prints its figures as JSON and a readable summary (a smoke run on tiny settings;
no timing is asserted: speed is measured by the bench, never by a test)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli import segbench


def test_bench_prints_every_phase(tiny_brats):
    result = segbench(
        "bench",
        "--data",
        str(tiny_brats),
        "--width",
        "4",
        "--depth",
        "2",
        "--size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--loop-steps",
        "2",
        "--loop-rounds",
        "1",
        "--device",
        "cpu",
        "--patch",
        "16",
        "16",
        "16",
        "--tta-steps",
        "2",
        "--tta-val-every",
        "1",
        "--target-dice",
        "0.01",
        "--skip-compile",
        "--skip-seeds",
    )  # compiling is the slow test's job (test_train)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["device_type"] == "cpu" and report["device"]
    assert report["trainer_loop"]["ratio_min"] <= report["trainer_loop"]["ratio_trainer_over_bare"]
    assert report["loader"]["ratio_loader_over_training"] > 0
    assert set(report["per_norm"]["images_per_s"]) >= {"none", "batch", "group", "adain", "spade"}
    precision = report["precision"]
    assert set(precision["images_per_s"]) == {"32", "bf16-mixed", "bf16-mixed channels_last"}
    assert precision["relative_to_fp32"]["32"] == 1.0
    assert precision["flops_per_step"] > 0 and all(0 < v for v in precision["share_of_gemm_peak"].values())
    assert {"batch", "instance", "group", "none"} <= set(report["per_norm_3d"]["voxels_per_s"])
    assert "switchable" not in report["per_norm_3d"]["voxels_per_s"]  # no 3-D form
    tta = report["time_to_accuracy"]["resunet (segbench default)"]
    # val Dice >= 0.01 is reached at once or not at all in two steps; the run stops where it is
    assert [h["step"] for h in tta["history"]] == ([1] if tta["reached"] and tta["step"] == 1 else [1, 2])
    assert not tta["reached"] or tta["seconds"] >= tta["train_seconds"] > 0
    assert "monai_unet" in report["time_to_accuracy"]
    assert "time to accuracy, resunet" in result.stderr and "device:" in result.stderr


@pytest.mark.slow
def test_bench_prints_the_run_breakdown_and_seed_runs_per_hour(tiny_brats):
    result = segbench(
        "bench",
        "--only-seeds",
        "--data",
        str(tiny_brats),
        "--seeds",
        "2",
        "--seed-steps",
        "2",
        "--seed-val-every",
        "1",
        "--packs",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    phases = report["run_breakdown"]["seconds"]
    assert {"steps", "val", "train_eval", "test", "tensorboard"} <= set(phases)
    assert sum(report["run_breakdown"]["share"].values()) == pytest.approx(1.0)
    ways = report["seeds_per_hour"]["ways"]
    assert set(ways) == {"one seed per process, 2 jobs", "packed K=2", "packed K=2, vmap"}
    assert ways["one seed per process, 2 jobs"]["relative"] == 1.0
    assert ways["packed K=2"]["max_abs_test_dice_difference"] < 0.05  # other thread count: float32 noise only
    assert ways["packed K=2, vmap"]["max_abs_test_dice_difference"] < 0.05
    assert "seed-runs per hour" in result.stderr
    assert set(report["packing_ceiling"]["member_steps_per_s"]) == {"one member", "K=2 vmapped"}
    assert "packing's ceiling" in result.stderr


def test_packing_ceiling_times_one_member_against_vmapped_packs():
    from segbench.bench.pack import lines, packing_ceiling

    threads = torch.get_num_threads()
    report = packing_ceiling([2, 3], torch.device("cpu"), width=4, depth=2, batch=1, size=(16, 16), steps=1, rounds=1)
    assert torch.get_num_threads() == threads  # the one-thread timing leaves the process as it was
    assert set(report["member_steps_per_s"]) == {"one member", "K=2 vmapped", "K=3 vmapped"}
    assert report["relative_to_one_member"]["one member"] == 1.0
    assert report["flops_per_member_step"] > 0 and report["gemm_peak_flop_per_s"] > 0
    share = report["share_of_gemm_peak"]
    assert all(v > 0 for v in share.values())
    assert report["ceiling_over_separate_runs"] == pytest.approx(1 / share["one member"])
    # a pack's share is its member-steps' share: K members' FLOPs per call
    assert share["K=2 vmapped"] / share["one member"] == pytest.approx(report["relative_to_one_member"]["K=2 vmapped"])
    assert "packing's ceiling" in lines(report)[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_bench_on_cuda_without_a_gpu_is_one_line():
    result = segbench("bench", "--device", "cuda")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--device=cuda" in result.stderr
