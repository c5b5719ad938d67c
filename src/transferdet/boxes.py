"""Box geometry shared by post-processing and evaluation. Boxes are ``[N, 4]`` arrays x1 y1 x2 y2."""

from __future__ import annotations

import numpy as np


def areas(boxes: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """Box areas ``[N]``; ``pixel_inclusive`` adds 1 to widths and heights (the VOC devkit convention)."""
    extra = 1.0 if pixel_inclusive else 0.0
    w = np.maximum(boxes[:, 2] - boxes[:, 0] + extra, 0.0)  # np.clip's arithmetic, without its dispatch cost
    h = np.maximum(boxes[:, 3] - boxes[:, 1] + extra, 0.0)
    return w * h


def intersections(a: np.ndarray, b: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """Intersection areas ``[N, M]`` of every box of ``a`` with every box of ``b``."""
    extra = 1.0 if pixel_inclusive else 0.0
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + extra
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + extra
    return np.maximum(w, 0.0) * np.maximum(h, 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """Intersection over union ``[N, M]``; 0 where both boxes are empty."""
    inter = intersections(a, b, pixel_inclusive)
    union = areas(a, pixel_inclusive)[:, None] + areas(b, pixel_inclusive)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union ``[N]`` of ``a[i]`` with ``b[i]``: :func:`iou_matrix`'s arithmetic, pair by pair
    (the same floats as its entries)."""
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = areas(a) + areas(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def fraction_inside(a: np.ndarray, regions: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """``[N, M]``: the fraction of each box of ``a`` that lies inside each region."""
    inter = intersections(a, regions, pixel_inclusive)
    area = areas(a, pixel_inclusive)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, inter / area, 0.0)
