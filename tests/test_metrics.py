"""Metrics against hand-computed numbers and against independent implementations (MONAI, scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.eval import metrics as M
from segbench.eval.metrics import CaseMetrics, ConfusionMatrix
from segbench.train.losses import SoftmaxCrossEntropy, build_loss, soft_dice_loss


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


def test_miou_counts_a_class_predicted_but_absent_as_zero_as_the_fcn_code_does():
    truth = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 2, 1, 1]]])  # class 2 predicted, never true
    cm = ConfusionMatrix(("a", "b", "c", "d"))  # class 3: neither true nor predicted -> left out
    cm.update(logits_for(pred, 4), truth)
    assert cm.compute()["miou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def random_cases(seed: int, cases=3, slices=4, size=12, channels=1):
    """Logits and blob-like targets for ``cases`` volumes of ``slices`` slices each (one empty case)."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(cases * slices, channels, size, size, generator=g) > 0.7).float()
    target[:slices] = 0  # the first case has no tumour: both-empty Dice is 1, predicted-empty HD95 is 0
    logits = 3 * (2 * target - 1) + 2.5 * torch.randn(target.shape, generator=g)
    ids = [f"case{i // slices}" for i in range(cases * slices)]
    return logits, target, ids


def brute_force_dice(logits, target, ids, threshold):
    pred = torch.sigmoid(logits) >= threshold
    out = []
    for case in dict.fromkeys(ids):
        rows = [i for i, c in enumerate(ids) if c == case]
        p, t = pred[rows].numpy(), target[rows].numpy() > 0.5
        denom = p.sum() + t.sum()
        out.append(1.0 if denom == 0 else 2 * (p & t).sum() / denom)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_per_case_dice_against_brute_force_and_monai(seed, threshold):
    from monai.metrics import DiceMetric

    logits, target, ids = random_cases(seed)
    logits[:4] = -20.0  # the empty case is predicted empty
    edge = M.threshold_to_edge(threshold)
    m = CaseMetrics(("WT",), ids, threshold=threshold)
    for lo in range(0, len(ids), 5):  # batches that cut across cases
        m.update(logits[lo : lo + 5], target[lo : lo + 5], list(range(lo, min(lo + 5, len(ids)))))
    out = m.compute()
    cut = M.edge_to_threshold(edge)
    expected = brute_force_dice(logits, target, ids, cut)
    assert out["dice"] == pytest.approx(expected.mean(), abs=1e-9)
    assert [v["dice"][0] for v in out["per_case"].values()] == pytest.approx(expected.tolist(), abs=1e-9)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    pred = (torch.sigmoid(logits) >= cut).float()
    for k, case in enumerate(dict.fromkeys(ids)):  # MONAI on each case as one (1, 1, Z, H, W) volume
        rows = [i for i, c in enumerate(ids) if c == case]
        vol = lambda x: x[rows].permute(1, 0, 2, 3)[None]  # noqa: E731, B023 - called in this iteration; (1, C, Z, H, W)
        assert float(metric(vol(pred), vol(target))) == pytest.approx(expected[k], abs=1e-6)


def test_pooled_soft_dice_auroc_and_ap_against_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    logits, target, ids = random_cases(5, cases=2, channels=2)
    m = CaseMetrics(("WT", "TC"), ids, hd95=False)
    m.update(logits, target, list(range(len(ids))))
    out = m.compute()
    # The histogram scores every pixel by its bin: scikit-learn on the binned scores must agree exactly.
    binned = ((logits + M.LOGIT_RANGE) / M.BIN_WIDTH).floor().clamp(-1, M.N_BINS - 2)
    auc = np.mean([roc_auc_score(target[:, c].flatten(), binned[:, c].flatten()) for c in range(2)])
    ap = np.mean([average_precision_score(target[:, c].flatten(), binned[:, c].flatten()) for c in range(2)])
    assert out["auroc"] == pytest.approx(auc, abs=1e-9)
    assert out["ap"] == pytest.approx(ap, abs=1e-9)
    # ... and within binning error of the exact scores.
    assert out["auroc"] == pytest.approx(
        np.mean([roc_auc_score(target[:, c].flatten(), logits[:, c].flatten()) for c in range(2)]), abs=2e-3
    )
    p = torch.sigmoid(logits).double()
    soft = [(2 * (p[:, c] * target[:, c]).sum() / (p[:, c].sum() + target[:, c].sum())).item() for c in range(2)]
    assert out["soft_dice"] == pytest.approx(np.mean(soft))
    pred = p >= 0.5
    pooled = [
        (2 * (pred[:, c] & (target[:, c] > 0)).sum() / (pred[:, c].sum() + target[:, c].sum())).item() for c in range(2)
    ]
    assert out["dice_pooled"] == pytest.approx(np.mean(pooled))


def test_tuned_threshold_maximises_mean_per_case_dice():
    logits, target, ids = random_cases(7)
    logits = logits - 2.0  # a shifted (badly calibrated) net: the best cut is not at 0.5
    m = CaseMetrics(("WT",), ids, hd95=False)
    m.update(logits, target, list(range(len(ids))))
    out = m.compute()
    candidates = [M.edge_to_threshold(e) for e in M.TUNABLE]
    scores = [brute_force_dice(logits, target, ids, t).mean() for t in candidates]
    assert out["dice_tuned"] == pytest.approx(max(scores), abs=1e-9)
    assert out["threshold_tuned"] == pytest.approx(candidates[int(np.argmax(scores))])
    assert out["dice_tuned"] >= out["dice"]


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_hd95_against_monai(seed, spacing):
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    from scipy import ndimage

    truth = ndimage.gaussian_filter(rng.standard_normal((10, 24, 24)), 2) > 0.05
    pred = ndimage.gaussian_filter(rng.standard_normal((10, 24, 24)), 2) > 0.05
    ours = M.hd95(pred, truth, spacing)
    theirs = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None].float(),
        torch.from_numpy(truth)[None, None].float(),
        percentile=95,
        spacing=list(spacing),
    )
    assert ours == pytest.approx(float(theirs), rel=1e-5, abs=1e-5)


def test_hd95_empty_masks_follow_the_brats_convention():
    empty, full = np.zeros((155, 240, 240), bool), np.zeros((155, 240, 240), bool)
    full[70:80, 100:120, 100:120] = True
    assert M.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert M.hd95(empty, full, (1, 1, 1)) == pytest.approx(373.13, abs=0.01)


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
