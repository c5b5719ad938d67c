"""Detection evaluation: VOC AP (SAMPLE / INTEGRATE), KITTI difficulty levels, AP by size, COCO mAP."""

from transferdet.evaluation.evaluator import EvaluationResult, Evaluator
from transferdet.structures import Detections, GroundTruth

__all__ = ["Detections", "EvaluationResult", "Evaluator", "GroundTruth"]
