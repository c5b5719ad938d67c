"""Average precision from a ranked list of true/false positives (PASCAL VOC definitions)."""

from __future__ import annotations

import numpy as np

from transferdet.config.schema import AveragePrecisionMode

SAMPLE_RECALLS = np.arange(11) / 10  # 0, 0.1, ..., 1 exactly as k/10 (VOC2007's 11 points)


def precision_recall(is_tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection of a list sorted by confidence (``is_tp`` bool)."""
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)
    recall = tp / num_gt if num_gt > 0 else np.full_like(tp, np.nan)
    return precision, recall


def ap_sample(precision: np.ndarray, recall: np.ndarray) -> float:
    """11-point interpolated AP (VOC2007): mean over t of the best precision at recall >= t."""
    total = 0.0
    for t in SAMPLE_RECALLS:
        mask = recall >= t
        total += float(precision[mask].max()) if mask.any() else 0.0
    return total / len(SAMPLE_RECALLS)


def ap_integrate(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP (VOC2010+): area under the monotone precision envelope."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def average_precision(is_tp: np.ndarray, num_gt: int, mode: AveragePrecisionMode) -> float:
    """AP of detections sorted by confidence; NaN when there is no ground truth (AP is undefined)."""
    if num_gt == 0:
        return float("nan")
    if len(is_tp) == 0:
        return 0.0
    precision, recall = precision_recall(is_tp, num_gt)
    return ap_sample(precision, recall) if mode is AveragePrecisionMode.SAMPLE else ap_integrate(precision, recall)
