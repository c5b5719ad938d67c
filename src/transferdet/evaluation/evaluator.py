"""VOC-style detection evaluation with per-class IoU thresholds, ignore regions and KITTI levels.

Per class (SPEC section 8):

1. ground truth and detections outside the class's ``evaluation_box_config`` size range are removed;
2. within each image, detections in descending confidence each take the unmatched ground truth with
   the highest IoU: a true positive if IoU >= the class threshold, else a false positive. A detection
   that is not a true positive but overlaps an *ignore box* (a ground truth of a harder level or a
   different size bucket, matched by IoU >= threshold) or lies at least half inside a ``dontcare``
   region counts as neither;
3. detections of all images are ranked by confidence; AP is the 11-point (``SAMPLE``) or all-point
   (``INTEGRATE``) interpolated area under the precision/recall curve.

Matching within an image depends only on the order of that image's detections, so images are matched
independently and the ranking is global afterwards. A class without ground truth has no AP (NaN, null
in metrics.json) and is left out of the mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from transferdet.boxes import fraction_inside, iou_matrix
from transferdet.config.schema import AveragePrecisionMode, EvaluationConfig
from transferdet.evaluation.ap import average_precision, precision_recall
from transferdet.structures import Detections, GroundTruth

TP, FP, IGNORED = 1, 0, -1
DONTCARE_INSIDE_FRACTION = 0.5  # a detection at least this much inside a dontcare region is ignored


@dataclass(frozen=True)
class Level:
    """A subset of the objects: ground truth outside it becomes ignore boxes, detections outside are dropped."""

    name: str
    min_height: float = 0.0
    max_height: float = math.inf
    max_occlusion: int | None = None
    max_truncation: float | None = None

    def gt_valid(self, heights: np.ndarray, occluded: np.ndarray | None, truncated: np.ndarray | None) -> np.ndarray:
        """Which ground truth counts at this level (the rest become ignore boxes)."""
        ok = (heights >= self.min_height) & (heights < self.max_height)
        if self.max_occlusion is not None and occluded is not None:
            ok &= occluded <= self.max_occlusion
        if self.max_truncation is not None and truncated is not None:
            ok &= truncated <= self.max_truncation
        return ok

    def det_keep(self, heights: np.ndarray) -> np.ndarray:
        """Which detections this level keeps (by height)."""
        return (heights >= self.min_height) & (heights < self.max_height)


ALL = Level("all")
KITTI_LEVELS = (
    Level("easy", 40, math.inf, 0, 0.15),
    Level("moderate", 25, math.inf, 1, 0.30),
    Level("hard", 25, math.inf, 2, 0.50),
)
SIZE_LEVELS = (Level("small", 0, 25), Level("medium", 25, 50), Level("large", 50, math.inf))


@dataclass
class Curve:
    """Ranked detections of one class at one level, and their AP."""

    ap: float
    num_gt: int
    is_tp: np.ndarray  # [K] bool, ranked by confidence
    scores: np.ndarray  # [K]

    @property
    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        return precision_recall(self.is_tp, self.num_gt)


@dataclass
class Matches:
    """The counted detections of one class at one level, ranked by confidence (ties in image order): the image of
    each, whether it is a true positive and its confidence; and the ground truth that counts in each image."""

    image: np.ndarray  # [K] int
    is_tp: np.ndarray  # [K] bool
    scores: np.ndarray  # [K]
    num_gt: np.ndarray  # [N] int, per image

    @staticmethod
    def of(images: list[np.ndarray], flags: list[np.ndarray], scores: list[np.ndarray], num_gt: np.ndarray) -> Matches:
        """From each image's arrays, in image order."""
        if not flags:
            return Matches(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), num_gt)
        sc = np.concatenate(scores)
        order = np.argsort(-sc, kind="stable")
        return Matches(np.concatenate(images)[order], np.concatenate(flags)[order], sc[order], num_gt)

    def curve(self, mode: AveragePrecisionMode, weights: np.ndarray | None = None) -> Curve:
        """The ranked curve and its AP; with ``weights`` (how many times each image counts) a resample's."""
        if weights is None:
            is_tp, scores, n = self.is_tp, self.scores, int(self.num_gt.sum())
        else:
            times = weights[self.image]
            is_tp, scores, n = np.repeat(self.is_tp, times), np.repeat(self.scores, times), int(weights @ self.num_gt)
        return Curve(average_precision(is_tp, n, mode), n, is_tp, scores)


@dataclass
class EvaluationResult:
    classes: list[str]
    levels: list[str]
    curves: dict[str, dict[str, Curve]]  # level -> class -> curve
    extra: dict[str, float] = field(default_factory=dict)  # e.g. COCO mAP
    # bootstrap intervals of AP over the images: class (the mean: "") -> (low, high), and their confidence
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    interval_confidence: float = 0.0

    def ap(self, cls: str, level: str = "all") -> float:
        """AP of ``cls`` at ``level`` (NaN without ground truth)."""
        return self.curves[level][cls].ap

    def mean_ap(self, level: str = "all") -> float:
        """Mean AP over the classes that have ground truth at ``level``."""
        aps = [c.ap for c in self.curves[level].values() if not math.isnan(c.ap)]
        return float(np.mean(aps)) if aps else float("nan")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics: ``mAP``, ``AP/<class>``, ``mAP_<level>``, ``AP_<level>/<class>`` (fractions in [0, 1])."""
        out: dict[str, float] = {}
        for level in self.levels:
            suffix = "" if level == "all" else f"_{level}"
            out[f"{prefix}mAP{suffix}"] = self.mean_ap(level)
            for cls in self.classes:
                out[f"{prefix}AP{suffix}/{cls}"] = self.ap(cls, level)
        for cls in self.classes:
            out[f"{prefix}num_gt/{cls}"] = self.curves["all"][cls].num_gt
        for cls, (low, high) in self.intervals.items():
            stem, tail = ("mAP_interval", "") if cls == "" else ("AP_interval", f"/{cls}")
            out[f"{prefix}{stem}_low{tail}"], out[f"{prefix}{stem}_high{tail}"] = low, high
        if self.intervals:
            out[f"{prefix}interval_confidence"] = self.interval_confidence
        out.update({f"{prefix}{k}": v for k, v in self.extra.items()})
        return out


def match_image(iou: np.ndarray, gt_valid: np.ndarray, threshold: float, in_dontcare: np.ndarray) -> np.ndarray:
    """Greedy matching of one image's detections (rows, sorted by confidence) to its ground truth.

    ``iou`` is ``[M, N]``; ``gt_valid`` marks the ground truth that counts (the rest are ignore boxes);
    ``in_dontcare`` marks detections inside a dontcare region. Returns TP / FP / IGNORED per detection.
    """
    m = iou.shape[0]
    flags = np.full(m, FP, np.int8)
    free = gt_valid.copy()
    ignore_boxes = ~gt_valid
    for j in range(m):
        if free.any():
            row = np.where(free, iou[j], -1.0)
            best = int(row.argmax())
            if row[best] >= threshold:
                flags[j] = TP
                free[best] = False
                continue
        if in_dontcare[j] or (ignore_boxes.any() and bool((iou[j, ignore_boxes] >= threshold).any())):
            flags[j] = IGNORED
    return flags


class Evaluator:
    """Evaluates detections against ground truth for a fixed class list and ``evaluation`` config."""

    def __init__(self, classes: Sequence[str], cfg: EvaluationConfig) -> None:
        self.classes = list(classes)
        self.cfg = cfg
        self.levels = [ALL, *(KITTI_LEVELS if cfg.kitti_difficulty else ()), *SIZE_LEVELS]

    def _size_range(self, cls: str) -> tuple[float, float, float, float]:
        box = self.cfg.evaluation_box_config.get(cls)
        if box is None:
            return 0.0, math.inf, 0.0, math.inf
        return box.minimum_height, box.maximum_height, box.minimum_width, box.maximum_width

    def evaluate(
        self, gts: Sequence[GroundTruth], dets: Sequence[Detections], *, intervals: bool = False
    ) -> EvaluationResult:
        """Score the detections of every image against its ground truth; with ``intervals``, AP's bootstrap
        intervals too (``evaluation.bootstrap_resamples``; none when 0)."""
        matches = self.match(gts, dets)
        mode = self.cfg.average_precision_mode
        curves = {lv: {cls: m.curve(mode) for cls, m in by_class.items()} for lv, by_class in matches.items()}
        result = EvaluationResult(self.classes, [lv.name for lv in self.levels], curves)
        if intervals and self.cfg.bootstrap_resamples > 0 and len(gts) > 0:
            result.intervals = self._intervals(matches[ALL.name], len(gts))
            result.interval_confidence = self.cfg.interval_confidence
        return result

    def _intervals(self, matches: dict[str, Matches], num_images: int, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals of each class's AP (and of the mean, key ``""``) over the images: the
        images drawn with replacement, the detections of an image drawn twice counted twice. A few validation
        images make a wide interval; its width is how far the figure can be trusted."""
        resamples, confidence = self.cfg.bootstrap_resamples, self.cfg.interval_confidence
        weights = np.random.default_rng(seed).multinomial(num_images, np.full(num_images, 1 / num_images), resamples)
        mode = self.cfg.average_precision_mode
        aps = np.array([[matches[c].curve(mode, w).ap for c in self.classes] for w in weights])  # [resamples, C]
        lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class (or every class) without ground truth: NaN
            columns = {cls: aps[:, k] for k, cls in enumerate(self.classes)} | {"": np.nanmean(aps, axis=1)}
            return {k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for k, v in columns.items()}

    def match(self, gts: Sequence[GroundTruth], dets: Sequence[Detections]) -> dict[str, dict[str, Matches]]:
        """Every image matched on its own (steps 1 and 2), per level and class."""
        if len(gts) != len(dets):
            raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")
        inclusive = self.cfg.pixel_inclusive_iou
        # per level, per class: image index, flags and scores of each image's counted detections, in image order
        images = {lv.name: {c: [] for c in self.classes} for lv in self.levels}
        flags = {lv.name: {c: [] for c in self.classes} for lv in self.levels}
        scores = {lv.name: {c: [] for c in self.classes} for lv in self.levels}
        num_gt = {lv.name: {c: np.zeros(len(gts), np.int64) for c in self.classes} for lv in self.levels}
        ranges = [self._size_range(c) for c in self.classes]
        for i, (gt, det) in enumerate(zip(gts, dets)):
            dontcare = gt.boxes[gt.class_ids < 0]
            for k, cls in enumerate(self.classes):
                hmin, hmax, wmin, wmax = ranges[k]
                g_sel = gt.class_ids == k
                g = gt.boxes[g_sel]
                g_h, g_w = g[:, 3] - g[:, 1], g[:, 2] - g[:, 0]
                g_in = (g_h >= hmin) & (g_h <= hmax) & (g_w >= wmin) & (g_w <= wmax)
                g, g_h = g[g_in], g_h[g_in]
                occ = gt.occluded[g_sel][g_in] if gt.occluded is not None else None
                trunc = gt.truncated[g_sel][g_in] if gt.truncated is not None else None

                d_sel = det.class_ids == k
                d, s = det.boxes[d_sel], det.scores[d_sel]
                d_h, d_w = d[:, 3] - d[:, 1], d[:, 2] - d[:, 0]
                d_in = (d_h >= hmin) & (d_h <= hmax) & (d_w >= wmin) & (d_w <= wmax)
                d, s, d_h = d[d_in], s[d_in], d_h[d_in]
                order = np.argsort(-s, kind="stable")
                d, s, d_h = d[order], s[order], d_h[order]

                iou = iou_matrix(d, g, inclusive)
                in_dc = (
                    (fraction_inside(d, dontcare, inclusive) >= DONTCARE_INSIDE_FRACTION).any(axis=1)
                    if len(dontcare)
                    else np.zeros(len(d), bool)
                )
                threshold = self.cfg.minimum_detection_ground_truth_overlap[cls]
                for lv in self.levels:
                    valid = lv.gt_valid(g_h, occ, trunc)
                    keep = lv.det_keep(d_h)
                    num_gt[lv.name][cls][i] = int(valid.sum())
                    if not keep.any():
                        continue
                    f = match_image(iou[keep], valid, threshold, in_dc[keep])
                    counted = f != IGNORED
                    flags[lv.name][cls].append(f[counted] == TP)
                    images[lv.name][cls].append(np.full(int(counted.sum()), i))
                    scores[lv.name][cls].append(s[keep][counted])

        return {
            lv.name: {
                cls: Matches.of(images[lv.name][cls], flags[lv.name][cls], scores[lv.name][cls], num_gt[lv.name][cls])
                for cls in self.classes
            }
            for lv in self.levels
        }
