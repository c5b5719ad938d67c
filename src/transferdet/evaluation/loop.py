"""The one evaluation loop: network outputs of each batch -> detections -> the evaluator.

Training's validation (the model in the training process) and the tasks (a predictor on any runtime)
differ only in how a batch becomes network outputs, which they pass in as ``outputs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from transferdet.evaluation.evaluator import EvaluationResult, Evaluator
from transferdet.structures import Detections, GroundTruth

Outputs = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # images [B, 3, H, W] -> (cov, bbox)


class EvalBatch(Protocol):
    images: torch.Tensor  # [B, 3, H, W]

    def ground_truth(self) -> list[GroundTruth]: ...


@dataclass
class Evaluation:
    """Ground truth and detections of every image, their score, and the first few images to look at."""

    result: EvaluationResult
    ground_truth: list[GroundTruth]
    detections: list[Detections]
    samples: list[tuple[torch.Tensor, Detections, GroundTruth]] = field(default_factory=list)


def evaluate_batches(
    batches: Iterable[EvalBatch],
    outputs: Outputs,
    postprocessor: Callable[[np.ndarray, np.ndarray], list[Detections]],
    evaluator: Evaluator,
    *,
    samples: int = 0,
    progress: Any = None,
    intervals: bool = False,
) -> Evaluation:
    """Run ``outputs`` and ``postprocessor`` over ``batches`` and score the detections; keep the first
    ``samples`` images (with their detections and ground truth) for pictures. ``progress`` wraps the batches
    (e.g. a tqdm factory); ``intervals``: AP's bootstrap intervals too."""
    gts: list[GroundTruth] = []
    dets: list[Detections] = []
    kept: list[tuple[torch.Tensor, Detections, GroundTruth]] = []
    for batch in progress(batches) if progress else batches:
        found = postprocessor(*outputs(batch.images))
        truth = batch.ground_truth()
        dets.extend(found)
        gts.extend(truth)
        if len(kept) < samples:
            kept.extend(zip(batch.images[: samples - len(kept)].cpu(), found, truth))
    return Evaluation(evaluator.evaluate(gts, dets, intervals=intervals), gts, dets, kept)
