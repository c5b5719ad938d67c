"""KITTI's own 2D detection protocol (``evaluation.protocol=kitti``): the rules of the object devkit's
``evaluate_object.cpp``, so figures compare with published KITTI numbers.

Per class (Car, Pedestrian, Cyclist) and difficulty (easy / moderate / hard):

* ground truth counts when its box is taller than 40 / 25 / 25 px, occlusion at most 0 / 1 / 2 and truncation
  at most 0.15 / 0.30 / 0.50; other ground truth of the class, and the neighbouring class (Van for Car,
  Person_sitting for Pedestrian), is ignored: a detection on it is neither right nor wrong; other classes
  (Truck, Tram, Misc, ...) are not ground truth of the class at all;
* detections (of any class) lower than the difficulty's minimum height are ignored: they may take a ground
  truth without scoring; a detection matches the unassigned ground truth of highest IoU above 0.7 (Car) / 0.5
  (Pedestrian, Cyclist); an unmatched detection more than that threshold inside (by its own area) a DontCare
  region is not a false positive;
* the confidence thresholds are chosen from the true positives' scores so that recall steps by about 1/40
  (``getThresholds``); precision at each is made monotone; AP is the mean precision over recall points
  1/40 .. 40/40 (``points=40``, the devkit since 2019) or 0, 0.1, .. 1 (``points=11``, older papers).

Where copies of the devkit differ (ground truth exactly at the minimum height; detection heights as floats),
this follows its Python port used by OpenPCDet and MMDetection3D. The devkit's own quirk is kept: with fewer
ground-truth objects than recall points, the thresholds do not reach the higher recall points and AP is lower
than the VOC figure (a single perfectly detected object scores 1/11 with 11 points, 0 with 40; 40 objects
found perfectly score 39/40 with 40 points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferdet.boxes import fraction_inside, iou_matrix
from transferdet.data.kitti import KittiObject, read_label_file
from transferdet.errors import ConfigError
from transferdet.structures import Detections

CLASSES = ("car", "pedestrian", "cyclist")
NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}
MIN_OVERLAP = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.30, 0.50)
N_SAMPLE_PTS = 41


@dataclass(frozen=True)
class Truth:
    """The label file of one image as the devkit reads it."""

    types: np.ndarray  # [N] lower-case KITTI types
    boxes: np.ndarray  # [N, 4] x1 y1 x2 y2
    truncation: np.ndarray  # [N]
    occlusion: np.ndarray  # [N]

    @staticmethod
    def of(objects: Sequence[KittiObject]) -> Truth:
        return Truth(
            np.array([o.cls.lower() for o in objects], dtype=object),
            np.array([[o.x1, o.y1, o.x2, o.y2] for o in objects], np.float64).reshape(-1, 4),
            np.array([o.truncated for o in objects], np.float64),
            np.array([o.occluded for o in objects], np.int64),
        )

    @staticmethod
    def read(path: str | Path | None) -> Truth:
        """The ground truth of a label file (an image without one has none)."""
        return Truth.of(read_label_file(path) if path is not None else [])


@dataclass
class _Image:
    """One image cleaned for one class and difficulty (the devkit's ``cleanData``)."""

    ignored_gt: np.ndarray  # [N] 0 counts, 1 ignored, -1 not this class
    ignored_det: np.ndarray  # [M] 0 counts, 1 ignored (too small, any class), -1 another class
    scores: np.ndarray  # [M], in the order given
    iou: np.ndarray  # [M, N] detections x ground truth
    dontcare: np.ndarray  # [M, D] detections x DontCare, over the detection's area


def _clean(
    truth: Truth, boxes: np.ndarray, scores: np.ndarray, of_class: np.ndarray, cls: str, difficulty: int
) -> _Image:
    heights = truth.boxes[:, 3] - truth.boxes[:, 1]
    hard = (
        (truth.occlusion > MAX_OCCLUSION[difficulty])
        | (truth.truncation > MAX_TRUNCATION[difficulty])
        | (heights <= MIN_HEIGHT[difficulty])
    )
    same = truth.types == cls
    neighbour = truth.types == NEIGHBOUR.get(cls, "")
    ignored_gt = np.where(same & ~hard, 0, np.where(neighbour | (same & hard), 1, -1))
    small = np.abs(boxes[:, 3] - boxes[:, 1]) < MIN_HEIGHT[difficulty]
    ignored_det = np.where(small, 1, np.where(of_class, 0, -1))
    dontcare = truth.boxes[truth.types == "dontcare"]
    return _Image(ignored_gt, ignored_det, scores, iou_matrix(boxes, truth.boxes), fraction_inside(boxes, dontcare))


def _statistics(im: _Image, threshold: float, min_overlap: float, compute_fp: bool) -> tuple[int, int, int, list]:
    """The devkit's ``computeStatistics`` for one image: (tp, fp, fn, scores of the true positives)."""
    below = im.scores < threshold if compute_fp else np.zeros(len(im.scores), bool)
    assigned = np.zeros(len(im.scores), bool)
    tp = fn = 0
    tp_scores = []
    for i in np.flatnonzero(im.ignored_gt != -1):
        best, best_score, best_iou, on_ignored = -1, -math.inf, 0.0, False
        for j in np.flatnonzero(~assigned & ~below & (im.ignored_det != -1)):
            o = im.iou[j, i]
            if o <= min_overlap:
                continue
            if not compute_fp:
                if im.scores[j] > best_score:
                    best, best_score = j, im.scores[j]
            elif (o > best_iou or on_ignored) and im.ignored_det[j] == 0:
                best, best_score, best_iou, on_ignored = j, 1.0, o, False
            elif best_score == -math.inf and im.ignored_det[j] == 1:
                best, best_score, on_ignored = j, 1.0, True
        if best < 0:
            fn += int(im.ignored_gt[i] == 0)
        elif im.ignored_gt[i] == 1 or im.ignored_det[best] == 1:
            assigned[best] = True
        else:
            tp += 1
            tp_scores.append(float(im.scores[best]))
            assigned[best] = True
    fp = 0
    if compute_fp:
        free = ~assigned & (im.ignored_det == 0) & ~below
        fp = int(free.sum())
        if im.dontcare.shape[1]:
            # each free detection inside a DontCare region is taken back (one region at a time, in order)
            for d in range(im.dontcare.shape[1]):
                inside = free & (im.dontcare[:, d] > min_overlap)
                fp -= int(inside.sum())
                free &= ~inside
    return tp, fp, fn, tp_scores


def thresholds(scores: list[float], num_gt: int) -> list[float]:
    """The devkit's ``getThresholds``: scores of the true positives where recall has moved on by ~1/40."""
    out, current = [], 0.0
    v = sorted(scores, reverse=True)
    for i, s in enumerate(v):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(v) - 1 else left
        if (right - current) < (current - left) and i < len(v) - 1:
            continue
        out.append(s)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return out


Scene = tuple[np.ndarray, np.ndarray, np.ndarray]  # one image's detections: boxes [M, 4], scores [M], of the class [M]


def average_precision(
    truths: Sequence[Truth], detections: Sequence[Scene], cls: str, difficulty: int, points: int = 40
) -> float:
    """KITTI AP of ``cls`` at ``difficulty`` (0 easy, 1 moderate, 2 hard). ``detections``: per image, every
    detection's box, score and whether it is of ``cls`` (the others matter when small). NaN when the class has
    no ground truth at that difficulty."""
    images = [_clean(t, b, s, c, cls, difficulty) for t, (b, s, c) in zip(truths, detections)]
    num_gt = int(sum((im.ignored_gt == 0).sum() for im in images))
    if num_gt == 0:
        return float("nan")
    min_overlap = MIN_OVERLAP[cls]
    scores = [s for im in images for s in _statistics(im, 0.0, min_overlap, False)[3]]
    ts = thresholds(scores, num_gt)
    precision = np.zeros(N_SAMPLE_PTS)
    # an image's statistics depend only on which of its detections pass the threshold: count them, once each
    memo: list[dict[int, tuple[int, int, int, list]]] = [{} for _ in images]
    for k, t in enumerate(ts):
        tp = fp = 0
        for im, seen in zip(images, memo):
            key = int((im.scores >= t).sum())
            if key not in seen:
                seen[key] = _statistics(im, t, min_overlap, True)
            tp, fp = tp + seen[key][0], fp + seen[key][1]
        precision[k] = tp / (tp + fp) if tp + fp else 0.0
    for k in range(len(ts)):
        precision[k] = precision[k:].max()
    if points == 40:
        return float(precision[1:].sum() / 40)
    if points == 11:
        return float(precision[::4].sum() / 11)
    raise ValueError(f"points={points}; allowed: 40, 11")


def kitti_metrics(
    truths: Sequence[Truth], detections: Sequence[Detections], classes: Sequence[str], points: int = 40
) -> dict[str, float]:
    """``kitti/AP_<difficulty>/<class>`` and ``kitti/mAP_<difficulty>`` (over the classes with ground truth) for
    the model's classes that are KITTI's (car, pedestrian, cyclist); detections in the label files' pixels."""
    if not set(classes) & set(CLASSES):
        raise ConfigError(
            "evaluation.protocol",
            "kitti",
            f"a model with KITTI's classes ({', '.join(CLASSES)}); it has {list(classes)}",
        )
    out: dict[str, float] = {}
    for d, name in enumerate(DIFFICULTIES):
        aps = []
        for k, cls in enumerate(classes):
            if cls not in CLASSES:
                continue
            per_image = [(det.boxes, det.scores, det.class_ids == k) for det in detections]
            ap = average_precision(truths, per_image, cls, d, points)
            out[f"kitti/AP_{name}/{cls}"] = ap
            if not math.isnan(ap):
                aps.append(ap)
        out[f"kitti/mAP_{name}"] = float(np.mean(aps)) if aps else float("nan")
    return out
