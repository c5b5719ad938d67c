"""Per-image detection data shared by post-processing, evaluation, inference and export."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GroundTruth:
    """Ground truth of one image. ``class_ids`` index the class list; -1 marks a dontcare region."""

    boxes: np.ndarray  # [N, 4] x1 y1 x2 y2 pixels
    class_ids: np.ndarray  # [N] int
    truncated: np.ndarray | None = None  # [N] float in [0, 1]
    occluded: np.ndarray | None = None  # [N] int 0..3


@dataclass
class Detections:
    """Detections of one image, highest confidence first."""

    boxes: np.ndarray  # [M, 4] x1 y1 x2 y2 pixels
    class_ids: np.ndarray  # [M] int
    scores: np.ndarray  # [M] float

    @staticmethod
    def empty() -> Detections:
        """No detections."""
        return Detections(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
