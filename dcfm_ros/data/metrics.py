"""Segmentation metrics in NumPy: confusion matrix, mIoU, frequency-weighted IoU, video consistency.

Conventions (stated once, used everywhere):
- Pixels whose ground truth is `ignore_index` (void) count nowhere.
- Prediction values outside 0..num_classes-1 count as wrong for their GT class (they fall in no
  predicted-class column), so a broken model cannot inflate IoU.
- mIoU averages over classes PRESENT in the ground truth or the prediction (union > 0); a class absent
  from both has no defined IoU and is excluded (reported as NaN per class). This is the usual
  accumulate-then-divide convention (over the whole split, not per image).
- wIoU (frequency-weighted IoU) = sum_c freq_c * IoU_c with freq_c = GT pixels of c / all valid GT
  pixels.
- mVC_l (paper eq. 13, from VSPW): for every window of l consecutive frames, the pixels whose GT is the
  same in all l frames ("GT-consistent") form the denominator; the numerator is the GT-consistent
  pixels whose PREDICTION is also the same in all l frames. VC_l of a video is the mean over its
  n - l + 1 windows; mVC_l is the mean of VC_l over videos. As in the paper's formula (and the VSPW
  reference implementation) the prediction only has to be consistent, not correct; `require_correct`
  gives the stricter variant (prediction consistent AND equal to the GT) for those who want it.
  Void GT pixels are removed from both sets. A window with no GT-consistent valid pixel is skipped;
  a video shorter than l frames has no VC_l and is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.extra_wrong = np.zeros(num_classes, np.int64)  # GT pixels predicted as an out-of-range id

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        valid = gt != self.ignore_index
        bad_gt = valid & ((gt < 0) | (gt >= self.num_classes))
        if bad_gt.any():
            raise ValueError(f"ground truth has values outside 0..{self.num_classes - 1} and "
                             f"ignore {self.ignore_index}: {np.unique(gt[bad_gt])[:10].tolist()}")
        gt, pred = gt[valid], pred[valid]
        in_range = (pred >= 0) & (pred < self.num_classes)
        n = self.num_classes
        self.matrix += np.bincount(gt[in_range] * n + pred[in_range], minlength=n * n).reshape(n, n)
        self.extra_wrong += np.bincount(gt[~in_range], minlength=n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix
        self.extra_wrong += other.extra_wrong

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both GT and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt_total = self.matrix.sum(1) + self.extra_wrong
        pred_total = self.matrix.sum(0)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def fwiou(self) -> float:
        gt_total = (self.matrix.sum(1) + self.extra_wrong).astype(np.float64)
        total = gt_total.sum()
        if total == 0:
            return float("nan")
        iou = np.nan_to_num(self.iou(), nan=0.0)
        return float((gt_total / total * iou).sum())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.extra_wrong.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-safe summary (NaN -> None)."""
        iou = self.iou()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "mIoU": _nan_none(self.miou()),
            "wIoU": _nan_none(self.fwiou()),
            "pixel_acc": _nan_none(self.pixel_accuracy()),
            "per_class_IoU": {n: _nan_none(float(v)) for n, v in zip(names, iou, strict=True)},
            "pixels": int(self.matrix.sum() + self.extra_wrong.sum()),
        }


def _nan_none(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def video_consistency(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], length: int,
                      ignore_index: int = IGNORE_INDEX, require_correct: bool = False) -> float | None:
    """VC_l of one video (eq. 13): mean over windows of |GT-consistent & pred-consistent| / |GT-consistent|.

    gts/preds: the video's frames in temporal order, each (H, W). Returns None when no window counts
    (video shorter than `length`, or no GT-consistent valid pixel in any window).
    """
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth frames but {len(preds)} predictions")
    n = len(gts)
    if n < length:
        return None
    gts_a = [np.asarray(g) for g in gts]
    preds_a = [np.asarray(p) for p in preds]
    for g, p in zip(gts_a, preds_a, strict=True):
        if g.shape != p.shape or g.shape != gts_a[0].shape:
            raise ValueError(f"all frames must share one shape; got GT {g.shape}, prediction {p.shape}, "
                             f"first GT {gts_a[0].shape}")
    ratios = []
    for i in range(n - length + 1):
        g0, p0 = gts_a[i], preds_a[i]
        gt_same = g0 != ignore_index
        pred_same = np.ones_like(gt_same)
        for j in range(i + 1, i + length):
            gt_same &= gts_a[j] == g0
            pred_same &= preds_a[j] == p0
        if require_correct:
            pred_same &= p0 == g0
        denom = int(gt_same.sum())
        if denom == 0:
            continue
        ratios.append(int((gt_same & pred_same).sum()) / denom)
    return float(np.mean(ratios)) if ratios else None


def mean_video_consistency(videos: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], length: int,
                           ignore_index: int = IGNORE_INDEX, require_correct: bool = False) -> float | None:
    """mVC_l: mean of VC_l over the videos that have one. videos: [(gts, preds), ...]."""
    vcs = [video_consistency(g, p, length, ignore_index, require_correct) for g, p in videos]
    vcs = [v for v in vcs if v is not None]
    return float(np.mean(vcs)) if vcs else None
