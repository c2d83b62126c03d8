"""Validation metrics: Dice per label for sigmoid targets, the FCN paper's four from a confusion matrix."""

from __future__ import annotations

import torch

from segbench.train.losses import IGNORE_INDEX


class DiceScore:
    """Dice per output channel, from sums accumulated over the whole validation set.

    Global sums (not a mean of per-image Dice) so that empty slices do not dominate and so that
    DDP ranks can simply add their sums.
    """

    def __init__(self, names: tuple[str, ...], threshold: float = 0.5):
        self.names, self.threshold = names, threshold
        self.sums = torch.zeros(3, len(names), dtype=torch.float64)  # intersection, |P|, |T|

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = (torch.sigmoid(logits) > self.threshold).double()
        target = target.double()
        dims = (0, 2, 3)
        self.sums += torch.stack([(pred * target).sum(dims), pred.sum(dims), target.sum(dims)]).cpu()

    def compute(self) -> dict[str, float]:
        inter, pred, true = self.sums
        dice = torch.where(pred + true > 0, 2 * inter / (pred + true).clamp_min(1e-12), torch.ones_like(inter))
        out = {"dice": float(dice.mean())}
        if len(self.names) > 1:
            out.update({f"dice_{n}": float(d) for n, d in zip(self.names, dice)})
        return out



class ConfusionMatrix:
    """``bincount``-based confusion matrix; rows are the truth, columns the prediction."""

    def __init__(self, names: tuple[str, ...], ignore_index: int = IGNORE_INDEX):
        self.names, self.ignore_index = names, ignore_index
        self.sums = torch.zeros(len(names), len(names), dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = len(self.names)
        pred = logits.argmax(1).flatten()
        true = target.flatten()
        keep = true != self.ignore_index
        idx = true[keep].to(torch.int64) * n + pred[keep]
        self.sums += torch.bincount(idx, minlength=n * n).reshape(n, n).cpu()

    def compute(self) -> dict[str, float]:
        """Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (Long et al., section 5)."""
        h = self.sums.double()
        true_per_class, pred_per_class, diag = h.sum(1), h.sum(0), h.diag()
        present = true_per_class > 0
        iou = diag / (true_per_class + pred_per_class - diag).clamp_min(1)
        freq = true_per_class / h.sum().clamp_min(1)
        out = {
            "pixel_acc": float(diag.sum() / h.sum().clamp_min(1)),
            "mean_acc": float((diag[present] / true_per_class[present]).mean()) if present.any() else 0.0,
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "fwiou": float((freq * iou).sum()),
        }
        out.update({f"iou_{name}": float(v) for name, v, p in zip(self.names, iou, present) if p})
        return out



# The validation metric that picks best.pt and that sweepers and reports compare.
MAIN_METRIC = {"multilabel": "dice", "multiclass": "miou"}


def build_metric(target_kind: str, names: tuple[str, ...]):
    return DiceScore(names) if target_kind == "multilabel" else ConfusionMatrix(names)
