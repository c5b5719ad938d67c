"""Scoring KITTI prediction files (16 fields, confidence last) against ground-truth label files, no model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferdet.config.inputs import KITTI_FOLDER, existing_folder
from transferdet.config.options import group_option
from transferdet.config.schema import IGNORE_CLASS, EvaluationConfig, EvaluationProtocol
from transferdet.config.structured import from_plain, merge_plain
from transferdet.config.validate import validate_evaluation
from transferdet.data.kitti import find_files, read_label_file
from transferdet.errors import ConfigError, DataError
from transferdet.evaluation.evaluator import EvaluationResult, Evaluator
from transferdet.evaluation.kitti import Truth, kitti_metrics
from transferdet.structures import Detections, GroundTruth

log = logging.getLogger(__name__)
MAX_WARNINGS_SHOWN = 20


def files_evaluation_config(classes: Sequence[str], overrides: Mapping[str, Any]) -> EvaluationConfig:
    """``evaluation/default.yaml`` (TLT's KITTI settings) with the command line's ``evaluation.*`` on top;
    every class needs its IoU threshold."""
    base = from_plain(EvaluationConfig, group_option("evaluation", "default"), "evaluation")
    base.minimum_detection_ground_truth_overlap = {
        c: v for c, v in base.minimum_detection_ground_truth_overlap.items() if c in classes
    }
    base.evaluation_box_config = {c: v for c, v in base.evaluation_box_config.items() if c in classes}
    cfg = merge_plain(base, overrides, "evaluation")
    missing = [c for c in classes if c not in cfg.minimum_detection_ground_truth_overlap]
    if missing:
        raise ConfigError(
            f"evaluation.minimum_detection_ground_truth_overlap.{missing[0]}",
            None,
            f"an IoU threshold in (0, 1] for every class ({', '.join(classes)}), e.g. "
            f"evaluation.minimum_detection_ground_truth_overlap.{missing[0]}=0.5",
        )
    validate_evaluation(cfg)
    return cfg


def _label_arrays(
    path: Path, mapping: Mapping[str, str], classes: Sequence[str], *, predictions: bool, warnings: list[str]
) -> tuple[np.ndarray, ...]:
    """Boxes, class ids (-1 = dontcare), truncation, occlusion, scores of one label or prediction file."""
    index = {c: k for k, c in enumerate(classes)}
    rows = []
    for o in read_label_file(path, allow_score=predictions):
        if predictions and o.score is None:
            raise DataError(path, "15 fields: prediction files need a 16th field, the confidence score", o.line)
        target = o.cls if predictions else mapping.get(o.cls)
        if target is None:
            continue
        if target not in index and target != IGNORE_CLASS:
            warnings.append(f"{path}:{o.line}: class {o.cls!r} is not one of {', '.join(classes)}; ignored")
            continue
        if o.x2 <= o.x1 or o.y2 <= o.y1:
            warnings.append(f"{path}:{o.line}: empty box; ignored")
            continue
        rows.append((o.x1, o.y1, o.x2, o.y2, index.get(target, -1), o.truncated, o.occluded, o.score or 0.0))
    a = np.array(rows, np.float64).reshape(-1, 8)
    return a[:, :4], a[:, 4].astype(np.int64), a[:, 5], a[:, 6].astype(np.int64), a[:, 7]


def read_prediction_files(
    predictions: Path, labels: Path, mapping: Mapping[str, str], classes: Sequence[str]
) -> tuple[list[GroundTruth], list[Detections]]:
    """Ground truth and detections of every image of ``labels`` (an image without a prediction file has none)."""
    for key, folder in (("predictions", predictions), ("labels", labels)):
        existing_folder(folder, key, KITTI_FOLDER)
    gt_files, pred_files = find_files(labels, ".txt"), find_files(predictions, ".txt")
    if not gt_files:
        raise DataError(labels, "no ground-truth .txt label files here (config key labels)")
    orphans = sorted(set(pred_files) - set(gt_files))
    if orphans:
        raise DataError(
            pred_files[orphans[0]],
            f"prediction file has no ground-truth label file in {labels} ({len(orphans)} such files)",
        )
    warnings: list[str] = []
    gts, dets = [], []
    for id_, gt_path in gt_files.items():
        b, c, t, o, _ = _label_arrays(gt_path, mapping, classes, predictions=False, warnings=warnings)
        gts.append(GroundTruth(b, c, t, o))
        if id_ in pred_files:
            b, c, _, _, s = _label_arrays(pred_files[id_], mapping, classes, predictions=True, warnings=warnings)
            keep = c >= 0
            dets.append(Detections(b[keep], c[keep], s[keep]))
        else:
            dets.append(Detections.empty())
    for w in warnings[:MAX_WARNINGS_SHOWN]:
        log.warning(w)
    if len(warnings) > MAX_WARNINGS_SHOWN:
        log.warning("... %d more warnings", len(warnings) - MAX_WARNINGS_SHOWN)
    return gts, dets


def evaluate_files(
    predictions: Path, labels: Path, mapping: Mapping[str, str], classes: Sequence[str], cfg: EvaluationConfig
) -> tuple[list[GroundTruth], list[Detections], EvaluationResult]:
    """Prediction files scored against label files (and with ``evaluation.protocol=kitti`` by KITTI's rules)."""
    gts, dets = read_prediction_files(predictions, labels, mapping, classes)
    result = Evaluator(classes, cfg).evaluate(gts, dets, intervals=True)
    if cfg.protocol is EvaluationProtocol.kitti:
        truths = [Truth.read(p) for p in find_files(labels, ".txt").values()]  # the order of read_prediction_files
        result.extra.update(kitti_metrics(truths, dets, classes, cfg.kitti_recall_points))
    return gts, dets, result
