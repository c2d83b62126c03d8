"""Metrics against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from segbench.train.losses import SoftmaxCrossEntropy, build_loss, soft_dice_loss
from segbench.train.metrics import ConfusionMatrix, DiceScore


def logits_for(pred, classes):
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float()


def test_confusion_matrix_gives_the_fcn_papers_four_metrics():
    # truth / prediction over 8 pixels (255 ignored):
    truth = torch.tensor([[[0, 0, 0, 1, 1, 2, 2, 255]]])
    pred = torch.tensor([[[0, 0, 1, 1, 1, 2, 0, 2]]])
    cm = ConfusionMatrix(("a", "b", "c"))
    cm.update(logits_for(pred, 3), truth)
    # rows truth, columns prediction: [[2,1,0],[0,2,0],[1,0,1]]
    assert cm.sums.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.compute()
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    iou = [2 / (3 + 3 - 2), 2 / (2 + 3 - 2), 1 / (2 + 1 - 1)]
    assert m["miou"] == pytest.approx(sum(iou) / 3)
    assert m["fwiou"] == pytest.approx((3 * iou[0] + 2 * iou[1] + 2 * iou[2]) / 7)
    assert m["iou_b"] == pytest.approx(iou[1])


def test_dice_from_global_sums():
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    logits = torch.tensor([[[[5.0, -5.0, 5.0, -5.0]]]])
    dice = DiceScore(("WT",))
    dice.update(logits, target)
    assert dice.compute()["dice"] == pytest.approx(2 * 1 / (2 + 2))


def test_soft_dice_loss_is_zero_for_a_perfect_prediction():
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert soft_dice_loss(torch.tensor([[[[50.0, -50.0]]]]), target, smooth=0) == pytest.approx(0, abs=1e-6)


def test_cross_entropy_ignores_255_and_sums_when_asked():
    logits = torch.zeros(1, 3, 1, 2)
    target = torch.tensor([[[1, 255]]])
    assert SoftmaxCrossEntropy(reduction="sum")(logits, target) == pytest.approx(torch.log(torch.tensor(3.0)))


def test_loss_must_fit_the_targets():
    with pytest.raises(ValueError, match="loss=ce needs multiclass targets.*bce"):
        build_loss("ce", "multilabel")
