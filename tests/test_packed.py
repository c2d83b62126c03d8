"""Packed seeds: K members trained through one vmapped step equal K separate runs (the exactness test).

Per packable norm, in float64 (where rounding cannot hide a semantic difference): 20 Adam steps of
K separately trained ResUNets against the same K trained packed, losses and final weights within
1e-10 relative. End to end, a packed pair of runs writes two ordinary run folders whose results
match separately trained runs of the same seeds.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

from segbench.models.resunet import ResUNet
from segbench.nn.norms import NORMS
from segbench.train.packed import UNPACKABLE_NORMS, PackedSteps, pack_refusal, train_packed, vectorize_by_default
from segbench.train.step import train_step
from segbench.train.trainer import train

PACKABLE = sorted(set(NORMS) - set(UNPACKABLE_NORMS))
K, STEPS = 2, 20


def _members(norm: str, dtype=torch.float64) -> list[torch.nn.Module]:
    out = []
    for seed in range(K):
        torch.manual_seed(100 + seed)
        out.append(ResUNet(4, 1, width=8, depth=2, norm=norm).to(dtype).train())
    return out


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(K, 2, 4, 16, 16, generator=g, dtype=dtype),
            (torch.rand(K, 2, 1, 16, 16, generator=g) > 0.7).to(dtype),
        )
        for _ in range(STEPS)
    ]


def _loss(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def _train_packed_threads(models, data, lr=1e-2, vectorize=True):
    """Each member in its own thread, stepping through PackedSteps as the trainer does."""
    steps, losses = PackedSteps(len(models), vectorize), [[] for _ in models]
    optimizers = [torch.optim.Adam(m.parameters(), lr) for m in models]
    errors = []

    def member(k):
        steps.enter()
        try:
            for images, target in data:
                losses[k].append(float(steps(models[k], images[k], target[k], _loss, optimizers[k])))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
        finally:
            steps.leave()

    threads = [threading.Thread(target=member, args=(k,)) for k in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return losses


def _train_separately(models, data, lr=1e-2):
    losses = [[] for _ in models]
    for k, model in enumerate(models):
        optimizer = torch.optim.Adam(model.parameters(), lr)
        for images, target in data:
            losses[k].append(float(train_step(model, images[k], target[k], _loss, optimizer)))
    return losses


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("norm", PACKABLE)
def test_packed_members_equal_separate_runs(norm):
    separate = _members(norm)
    packed = copy.deepcopy(separate)
    data = _data()
    expected = _train_separately(separate, data)
    got = _train_packed_threads(packed, data)
    for k in range(K):
        assert got[k] == pytest.approx(expected[k], rel=1e-10), f"{norm}: member {k}'s losses differ"
    for a, b in zip(packed, separate):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            if x.is_floating_point():
                assert _relative(x, y) < 1e-10, f"{norm}: {name} differs"
            else:
                assert torch.equal(x, y), f"{norm}: {name} differs"  # BN's batch counters


@pytest.mark.parametrize("norm", ["batch", "group", "evonorm_s0"])
def test_members_taking_turns_equal_separate_float32_runs_bit_for_bit(norm):
    separate = _members(norm, torch.float32)
    packed = copy.deepcopy(separate)
    data = _data(torch.float32)
    expected = _train_separately(separate, data)
    assert _train_packed_threads(packed, data, vectorize=False) == expected
    for a, b in zip(packed, separate):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(x, y)


def test_frozen_weights_pack_and_stay_frozen():
    """FCN-8s keeps its bilinear upsampling fixed: packed, it must train as separately, those weights untouched."""
    from segbench.models.fcn import FCN

    def fcns():
        out = []
        for seed in range(K):
            torch.manual_seed(100 + seed)
            out.append(FCN(1, variant=8, in_channels=4, width=0.0625, dropout=0.0).double().train())
        return out

    g = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(K, 2, 4, 32, 32, generator=g, dtype=torch.float64),
            (torch.rand(K, 2, 1, 32, 32, generator=g) > 0.7).double(),
        )
        for _ in range(5)
    ]
    separate = fcns()
    packed, frozen = copy.deepcopy(separate), [n for n, p in separate[0].named_parameters() if not p.requires_grad]
    assert frozen
    before = copy.deepcopy(separate[0].state_dict())
    expected = _train_separately(separate, data)
    for got, want in zip(_train_packed_threads(packed, data, vectorize=True), expected):
        assert got == pytest.approx(want, rel=1e-10)
    for a, b in zip(packed, separate):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert _relative(x, y) < 1e-10
    assert all(torch.equal(separate[0].state_dict()[n], before[n]) for n in frozen)
    assert all(torch.equal(packed[0].state_dict()[n], before[n]) for n in frozen)


def test_a_member_leaving_early_lets_the_others_go_on():
    models, data = _members("batch"), _data()
    steps = PackedSteps(len(models))
    optimizers = [torch.optim.Adam(m.parameters(), 1e-2) for m in models]
    done = []

    def member(k, n):
        steps.enter()
        try:
            for images, target in data[:n]:
                steps(models[k], images[k], target[k], _loss, optimizers[k])
            done.append(k)
        finally:
            steps.leave()

    threads = [threading.Thread(target=member, args=(k, 3 + 5 * k)) for k in range(K)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(done) == list(range(K))


@pytest.mark.parametrize("norm", sorted(UNPACKABLE_NORMS))
def test_unpackable_norms_are_refused_with_the_reason(tiny_cfg, norm):
    reason = pack_refusal(tiny_cfg(f"norm={norm}"), vectorize=True)
    assert reason and reason.startswith(f"norm={norm} cannot pack")
    assert pack_refusal(tiny_cfg(f"norm={norm}"), vectorize=False) is None  # taking turns needs no vmap


FCN = ("model=fcn8s", "model.width=0.0625", "data.size=[32,32]")  # dropout 0.5 after fc6 and fc7


def test_dropout_is_refused_in_one_vmapped_step_and_takes_turns_by_default(tiny_cfg):
    reason = pack_refusal(tiny_cfg(*FCN), vectorize=True)
    assert reason and reason.startswith("model.dropout=0.5 cannot pack") and "vectorize=false" in reason
    assert pack_refusal(tiny_cfg(*FCN), vectorize=False) is None
    assert pack_refusal(tiny_cfg(*FCN, "model.dropout=0"), vectorize=True) is None
    assert not vectorize_by_default(tiny_cfg(*FCN))


@pytest.mark.parametrize(
    "vectorize, model",
    [(False, ()), (False, FCN), pytest.param(True, (), marks=pytest.mark.slow)],
    ids=["turns", "turns-dropout", "vmap"],
)
def test_packed_runs_are_ordinary_runs_that_match_separate_ones(tiny_cfg, tmp_path, vectorize, model):
    seeds = (5, 6)
    overrides = (*model, "norm=batch", "trainer.max_steps=4", "trainer.val_every=2")
    separate = [train(tiny_cfg(*overrides, f"seed={s}"), tmp_path / f"alone_{s}") for s in seeds]
    packed = train_packed(
        [tiny_cfg(*overrides, f"seed={s}") for s in seeds],
        [tmp_path / f"packed_{s}" for s in seeds],
        vectorize=vectorize,
    )
    for s, alone, together in zip(seeds, separate, packed):
        assert not isinstance(together, BaseException), together
        saved = json.loads((tmp_path / f"packed_{s}" / "metrics.json").read_text())
        assert saved["seed"] == s and saved["steps"] == 4
        assert (tmp_path / f"packed_{s}" / "checkpoints" / "last.pt").is_file()
        assert list((tmp_path / f"packed_{s}" / "tb").glob("events.*"))
        if not vectorize:  # the same kernels in the same order: the same numbers
            assert together["test"]["last"]["per_case"] == alone["test"]["last"]["per_case"]
            assert together["val"]["final"]["loss"] == alone["val"]["final"]["loss"]
        assert together["val"]["final"]["loss"] == pytest.approx(alone["val"]["final"]["loss"], rel=1e-4)
        assert together["test"]["last"]["soft_dice"] == pytest.approx(alone["test"]["last"]["soft_dice"], rel=1e-4)


@pytest.mark.parametrize(
    "setting, fragment",
    [  # each case pays the sweep's preflight dry runs: one in the fast suite
        ("hydra.launcher.pack=0", "hydra.launcher.pack=0 must be a positive"),
        pytest.param("hydra.launcher.pack=four", "hydra.launcher.pack='four'", marks=pytest.mark.slow),
        pytest.param(
            "hydra.launcher.vectorize=maybe", "hydra.launcher.vectorize='maybe' must be true", marks=pytest.mark.slow
        ),
    ],
)
def test_bad_launcher_settings_are_one_line_exit_2_and_write_nothing(tiny_brats, tmp_path, setting, fragment):
    from tests.conftest import SMALL
    from tests.test_cli import segbench

    result = segbench(
        "train",
        "-m",
        f"data.root={tiny_brats}",
        *SMALL,
        "seed=1,2",
        "hydra/launcher=packed",
        setting,
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("kind", ["bce", "dice", "bce_dice"])
@pytest.mark.parametrize("void", [False, True], ids=["no_void", "void_border"])
def test_losses_with_a_data_dependent_branch_run_under_vmap(kind, void):
    """The multilabel loss asks whether any pixel is void (255); vmap cannot read that, so the
    packed step decides it on all members' targets first. Each member's loss must be its own."""
    from torch.func import vmap

    from segbench.data.common import IGNORE_INDEX
    from segbench.train.losses import MultilabelLoss, vmap_ready

    loss = MultilabelLoss(kind)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(K, 2, 1, 8, 8, generator=g, dtype=torch.float64)
    target = (torch.rand(K, 2, 1, 8, 8, generator=g) > 0.6).double()
    if void:
        target[1, :, :, :2] = IGNORE_INDEX  # only the second member's batch has void pixels
    packed = vmap(vmap_ready(loss, target))(logits, target)
    alone = torch.stack([loss(logits[k], target[k]) for k in range(K)])
    torch.testing.assert_close(packed, alone, rtol=1e-12, atol=1e-12)
