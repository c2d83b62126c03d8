"""The first step's memory estimate: weights, gradients, optimizer state and layer outputs, on meta."""

import pytest
import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.train import memory


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_the_estimate_follows_its_formula():
    weights = sum(p.numel() for p in _net().parameters())
    state, activations = memory.estimate(_net, torch.zeros(3, 10, 12), batch=5, optimizer="adam")
    assert state == weights * 4 * (2 + 2)  # float32 weights, gradients and Adam's two moments
    assert activations == 5 * 10 * 12 * (8 + 8 + 8 + 2) * 4  # each leaf's output
    assert memory.estimate(_net, torch.zeros(3, 10, 12), 5, "sgd")[0] == weights * 4 * 3
    assert all(p.device.type == "cpu" for p in _net().parameters())  # nothing left on meta by the context


def test_a_step_larger_than_the_free_memory_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10_000)
    with pytest.raises(SegbenchError, match=r"needs about .* GiB .*activations .* at data.batch_size=64.*lower") as err:
        memory.check_fits(_net, torch.zeros(3, 64, 64), 64, "adam", torch.device("cpu"))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)
    memory.check_fits(_net, torch.zeros(3, 64, 64), 64, "adam", torch.device("cpu"))  # fits: no error


def test_a_gpu_run_is_not_estimated_in_the_preflight_and_meta_failures_are_skipped():
    assert memory.available_bytes(torch.device("cuda", 0)) is None
    assert memory.available_bytes(torch.device("cpu")) > 0

    def reads_weights():
        raise RuntimeError("cannot load weights on meta")

    assert memory.estimate(reads_weights, torch.zeros(1, 4, 4), 1, "adam") is None
