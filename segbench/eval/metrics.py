"""Evaluation metrics a segmentation researcher trusts.

Sigmoid (multi-label) targets are scored per case (a BraTS subject: its slices put back into one
volume) as the BraTS challenge does: Dice per case with "both empty" = 1, averaged over cases;
HD95 per case in mm. Besides: pooled Dice, soft Dice, and the threshold-free AUROC and average
precision. Everything but HD95 comes from per-case histograms of the logits, so Dice at *any*
threshold is known after one pass: the threshold can be chosen on val and applied unchanged on
test. Softmax targets get the FCN paper's four numbers from a confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy import ndimage

from segbench.data.common import IGNORE_INDEX

# Logit histogram: bins of 0.1 between -12 and 12 (probabilities 6e-6 .. 1 - 6e-6) plus two
# overflow bins. A threshold is a bin edge; "predicted positive" means logit >= edge.
LOGIT_RANGE, BIN_WIDTH = 12.0, 0.1
N_EDGES = int(round(2 * LOGIT_RANGE / BIN_WIDTH)) + 1
EDGES = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, N_EDGES)  # edge j is the lower edge of bin j + 1
N_BINS = N_EDGES + 1
# Thresholds the val-tuned Dice may pick: probabilities between 0.02 and 0.98.
TUNABLE = np.flatnonzero(np.abs(EDGES) <= np.log(0.98 / 0.02) + 1e-9)


def threshold_to_edge(threshold: float) -> int:
    """Index of the bin edge nearest to probability ``threshold``."""
    logit = np.log(threshold / (1 - threshold))
    return int(np.argmin(np.abs(EDGES - logit)))


def edge_to_threshold(edge: int) -> float:
    return float(1 / (1 + np.exp(-EDGES[edge])))


# How HD95 reduces the two directed surface-distance sets (every convention uses the BraTS rules
# for empty masks below, and 1-connected surfaces: a mask minus its erosion).
HD95_CONVENTIONS = {
    "monai": "the larger of the two directed 95th percentiles (MONAI's compute_hausdorff_distance, "
    "MedPy, BraTS 2018-2021's Hausdorff95)",
    "brats": "the 95th percentile of both directions' distances pooled (panoptica, the BraTS 2023+ evaluation)",
}


def hd95(pred: np.ndarray, truth: np.ndarray, spacing, convention: str = "monai") -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of two masks, in mm.

    ``convention``: a key of ``HD95_CONVENTIONS``. Empty masks follow BraTS's published rule,
    whichever convention: both empty = 0, one empty = the volume's diagonal (373.13 mm for
    240x240x155); panoptica's raw metric gives a distance to the array's edge for one empty mask
    and fails for two, so comparisons with it are on non-empty pairs.
    """
    if convention not in HD95_CONVENTIONS:
        raise ValueError(f"hd95 convention {convention!r}; choose one of: {', '.join(HD95_CONVENTIONS)}")
    spacing = np.asarray(spacing, float)[-pred.ndim :]
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.sqrt(((np.asarray(pred.shape) * spacing) ** 2).sum()))
    # Crop to the union's bounding box (plus one voxel): distances between the two surfaces stay exact.
    lo = np.maximum(np.argwhere(pred | truth).min(0) - 1, 0)
    hi = np.argwhere(pred | truth).max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred, truth = pred[box], truth[box]
    edges_p = pred ^ ndimage.binary_erosion(pred)
    edges_t = truth ^ ndimage.binary_erosion(truth)
    to_t = ndimage.distance_transform_edt(~edges_t, sampling=spacing)[edges_p]
    to_p = ndimage.distance_transform_edt(~edges_p, sampling=spacing)[edges_t]
    if convention == "brats":
        return float(np.percentile(np.concatenate([to_t, to_p]), 95))
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


def auroc_from_histograms(neg: np.ndarray, pos: np.ndarray) -> float:
    """Area under the ROC curve of scores binned as ``neg``/``pos`` counts (ascending bins, ties = 1/2)."""
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))


def ap_from_histograms(neg: np.ndarray, pos: np.ndarray) -> float:
    """Average precision as scikit-learn defines it (sum of precision x recall steps), from bins."""
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # descending thresholds
    seen = (tp + fp) > 0
    precision = np.where(seen, tp / np.maximum(tp + fp, 1), 0)
    recall = tp / n_pos
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * precision).sum())


def _mean_defined(values: list[float]) -> float | None:
    """The mean of the defined values; None (JSON null, with a reason beside it) when none is."""
    defined = [v for v in values if np.isfinite(v)]
    return float(np.mean(defined)) if defined else None


class CaseMetrics:
    """Per-case and pooled metrics for sigmoid outputs, streamed slice by slice.

    Args:
        names: one name per output channel (e.g. ``("WT",)`` or ``("WT", "TC", "ET")``).
        case_ids: the case of every sample of the dataset, in dataset order.
        spacing: (Z, H, W) voxel size in mm, for HD95: one for every case, or a mapping from case
            id to that case's own.
        threshold: the probability at which masks are cut for Dice and HD95.
        hd95: compute HD95 (needs each case's masks; a few ms per case).
        tune: also report the threshold that maximises mean per-case Dice on these cases
            (``threshold_tuned``, ``dice_tuned``); for val only, never for a split reported on.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        case_ids: list[str],
        spacing=(1.0, 1.0, 1.0),
        threshold: float = 0.5,
        hd95: bool = True,
        tune: bool = True,
    ):
        # hd95: False (not computed), True (the "monai" convention) or a key of HD95_CONVENTIONS.
        self.names, self.compute_hd95, self.tune = tuple(names), bool(hd95), tune
        self.convention = hd95 if isinstance(hd95, str) else "monai"
        self.spacing = dict(spacing) if isinstance(spacing, Mapping) else tuple(spacing)
        self.cases = list(dict.fromkeys(case_ids))
        position = {c: i for i, c in enumerate(self.cases)}
        self.case_of = [position[c] for c in case_ids]
        self.edge = threshold_to_edge(threshold)
        k, n = len(names), len(self.cases)
        self.hist = torch.zeros(n, k, 2, N_BINS, dtype=torch.float64)  # (case, channel, neg/pos, bin)
        self.soft = torch.zeros(n, k, 3, dtype=torch.float64)  # sum p*t, sum p, sum t
        self.hd = torch.zeros(n, k, dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.float64)  # 1 for cases this process finished
        self._open: int | None = None
        self._slices: list[tuple[np.ndarray, np.ndarray]] = []

    def spacing_of(self, case: str) -> tuple:
        """The voxel size HD95 uses for ``case``."""
        return tuple(self.spacing[case]) if isinstance(self.spacing, dict) else self.spacing

    @property
    def threshold(self) -> float:
        return edge_to_threshold(self.edge)

    def update(self, logits: torch.Tensor, target: torch.Tensor, sample_ids: list[int]) -> None:
        """Add a batch: ``logits`` and ``target`` (N, K, H, W) slices, or (N, K, D, H, W) whole
        volumes, for dataset samples ``sample_ids``. Target pixels of ``IGNORE_INDEX`` (a palette
        mask's void border) count nowhere: neither as tumour nor as background."""
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        ignored = target == IGNORE_INDEX
        valid = ~ignored if bool(ignored.any()) else None
        target = (target > 0.5) & ~ignored
        bins = ((logits + LOGIT_RANGE) / BIN_WIDTH).floor().long().add(1).clamp(0, N_BINS - 1)
        prob = torch.sigmoid(logits).double()
        for j, sample in enumerate(sample_ids):
            case = self.case_of[sample]
            if case != self._open:
                self._close()
                self._open = case
            for c in range(len(self.names)):
                t = target[j, c].flatten()
                b = bins[j, c].flatten()
                if valid is not None:
                    keep = valid[j, c].flatten()
                    t, b = t[keep], b[keep]
                self.hist[case, c, 0] += torch.bincount(b[~t], minlength=N_BINS).double()
                self.hist[case, c, 1] += torch.bincount(b[t], minlength=N_BINS).double()
            p, tt = prob[j].flatten(1), target[j].flatten(1).double()
            if valid is not None:
                p = p * valid[j].flatten(1)
            self.soft[case] += torch.stack([(p * tt).sum(1), p.sum(1), tt.sum(1)], dim=1)
            if self.compute_hd95:
                pred, truth = (bins[j] > self.edge).numpy(), target[j].numpy()
                if valid is not None:
                    pred = pred & valid[j].numpy()
                if pred.ndim == 3:  # a slice: one (K, 1, H, W) layer of the case's volume
                    pred, truth = pred[:, None], truth[:, None]
                self._slices.append((pred, truth))

    def _close(self) -> None:
        """The open case is complete: its HD95 per channel, from its stacked slices."""
        if self._open is None:
            return
        if self.compute_hd95 and self._slices:
            pred = np.concatenate([s[0] for s in self._slices], axis=1)  # (K, Z, H, W)
            truth = np.concatenate([s[1] for s in self._slices], axis=1)
            for c in range(len(self.names)):
                self.hd[self._open, c] = hd95(
                    pred[c], truth[c], self.spacing_of(self.cases[self._open]), self.convention
                )
        self.seen[self._open] = 1
        self._open, self._slices = None, []

    def state(self) -> list[torch.Tensor]:
        """The sums to add across DDP ranks (each rank owns whole cases)."""
        self._close()
        return [self.hist, self.soft, self.hd, self.seen]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.hist, self.soft, self.hd, self.seen = tensors

    def case_dice(self, edges: np.ndarray) -> np.ndarray:
        """(case, channel, edge) Dice of the finished cases at threshold edges ``edges``; both empty = 1."""
        h = self.hist.numpy()[self.seen.numpy() > 0]  # (case, channel, neg/pos, bin)
        above = np.cumsum(h[..., ::-1], -1)[..., ::-1]  # pixels in bins >= b
        tp, fp = above[:, :, 1, edges + 1], above[:, :, 0, edges + 1]
        denom = tp + fp + h[:, :, 1].sum(-1)[..., None]  # 2 TP + FP + FN
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 1.0)

    def compute(self) -> dict:
        """Scalars (keys below) and ``per_case`` (case -> dice, hd95 per channel)."""
        self._close()
        done = self.seen.numpy() > 0
        dice_cases = self.case_dice(np.array([self.edge]))[..., 0]  # (cases, K)
        h = self.hist.numpy()[done].sum(0)  # (K, 2, bins)
        tp = h[:, 1, self.edge + 1 :].sum(-1)
        pred = h[:, :, self.edge + 1 :].sum((1, 2))
        true = h[:, 1].sum(-1)
        pooled = np.where(pred + true > 0, 2 * tp / np.maximum(pred + true, 1e-12), 1.0)
        soft = self.soft.numpy()[done].sum(0)
        soft_dice = np.where(
            soft[:, 1] + soft[:, 2] > 0, 2 * soft[:, 0] / np.maximum(soft[:, 1] + soft[:, 2], 1e-12), 1.0
        )
        out = {
            "dice": float(dice_cases.mean()) if len(dice_cases) else float("nan"),
            "dice_pooled": float(pooled.mean()),
            "soft_dice": float(soft_dice.mean()),
            "auroc": _mean_defined([auroc_from_histograms(*h[c]) for c in range(len(self.names))]),
            "ap": _mean_defined([ap_from_histograms(*h[c]) for c in range(len(self.names))]),
            "threshold": self.threshold,
            # What the first question's code looked at: Dice at a fixed 0.5, whatever threshold val chose.
            "dice_at_0.5": float(self.case_dice(np.array([threshold_to_edge(0.5)]))[..., 0].mean())
            if len(dice_cases)
            else float("nan"),
            "cases": int(done.sum()),
        }
        if out["auroc"] is None or out["ap"] is None:
            out["auroc_ap_undefined"] = (
                "no tumour pixel (or no background pixel) in these cases: AUROC and average precision need both classes"
            )
        if self.tune:
            curve = self.case_dice(TUNABLE).mean(axis=(0, 1))  # mean per-case Dice at each tunable edge
            best = int(np.argmax(curve))
            out.update(dice_tuned=float(curve[best]), threshold_tuned=edge_to_threshold(int(TUNABLE[best])))
        if self.compute_hd95:
            out["hd95"] = float(self.hd.numpy()[done].mean())
        if len(self.names) > 1:
            for c, name in enumerate(self.names):
                out[f"dice_{name}"] = float(dice_cases[:, c].mean())
                if self.compute_hd95:
                    out[f"hd95_{name}"] = float(self.hd.numpy()[done][:, c].mean())
        cases = [c for c, d in zip(self.cases, done) if d]
        h_cases = self.hist.numpy()[done]  # (case, channel, neg/pos, bin)
        truth_voxels = h_cases[:, :, 1].sum(-1)
        pred_voxels = h_cases[:, :, :, self.edge + 1 :].sum((-1, -2))
        out["per_case"] = {
            case: {
                "dice": [float(v) for v in dice_cases[i]],
                "truth_voxels": [int(v) for v in truth_voxels[i]],
                "predicted_voxels": [int(v) for v in pred_voxels[i]],
                **({"hd95": [float(v) for v in self.hd.numpy()[done][i]]} if self.compute_hd95 else {}),
            }
            for i, case in enumerate(cases)
        }
        return out


class ConfusionMatrix:
    """``bincount``-based confusion matrix; rows are the truth, columns the prediction."""

    def __init__(self, names: tuple[str, ...], ignore_index: int = IGNORE_INDEX):
        self.names, self.ignore_index = names, ignore_index
        self.sums = torch.zeros(len(names), len(names), dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor, sample_ids=None) -> None:
        n = len(self.names)
        pred = logits.argmax(1).flatten()
        true = target.flatten()
        keep = true != self.ignore_index
        idx = true[keep].to(torch.int64) * n + pred[keep]
        self.sums += torch.bincount(idx, minlength=n * n).reshape(n, n).cpu()

    def state(self) -> list[torch.Tensor]:
        return [self.sums]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        (self.sums,) = tensors

    def compute(self) -> dict[str, float]:
        """Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (Long et al., section 5).

        As in the FCN paper's code (``score.py``): a class predicted but absent from the truth has
        IU 0 and counts; only classes absent from both truth and prediction are left out.
        """
        h = self.sums.double()
        true_per_class, pred_per_class, diag = h.sum(1), h.sum(0), h.diag()
        present = true_per_class > 0
        union = true_per_class + pred_per_class - diag
        scored = union > 0
        iou = diag / union.clamp_min(1)
        freq = true_per_class / h.sum().clamp_min(1)
        out = {
            "pixel_acc": float(diag.sum() / h.sum().clamp_min(1)),
            "mean_acc": float((diag[present] / true_per_class[present]).mean()) if present.any() else 0.0,
            "miou": float(iou[scored].mean()) if scored.any() else 0.0,
            "fwiou": float((freq * iou).sum()),
        }
        out.update({f"iou_{name}": float(v) for name, v, s in zip(self.names, iou, scored) if s})
        return out


# The validation metric that picks best.pt, the lr and the threshold (val only), and the metric
# that reports and `segbench compare` call the result (measured on test).
MAIN_METRIC = {"multilabel": "dice_tuned", "multiclass": "miou"}
REPORT_METRIC = {"multilabel": "dice", "multiclass": "miou"}


def build_metric(dataset, threshold: float = 0.5, hd95: bool | str = True, tune: bool = True):
    """The metric object for a dataset's kind of targets (``tune``: see ``CaseMetrics``)."""
    if dataset.target_kind != "multilabel":
        return ConfusionMatrix(dataset.class_names)
    cases = dataset.cases if getattr(dataset, "cases", None) is not None else [str(i) for i in range(len(dataset))]
    return CaseMetrics(dataset.class_names, cases, getattr(dataset, "spacing", (1.0, 1.0, 1.0)), threshold, hd95, tune)
