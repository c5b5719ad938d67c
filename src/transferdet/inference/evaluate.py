"""A predictor scored on a split of a converted dataset, through the one evaluation loop."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from transferdet.config.schema import EvaluationProtocol
from transferdet.data.converted import ConvertedDataset
from transferdet.data.loader import split_loader
from transferdet.errors import ConfigError
from transferdet.evaluation.kitti import Truth, kitti_metrics
from transferdet.evaluation.loop import Evaluation, evaluate_batches
from transferdet.inference.predictor import Predictor


def evaluate_predictor(
    predictor: Predictor, converted_dir: str | Path, split: str = "val", progress: bool = True
) -> Evaluation:
    """Detections of ``predictor`` on ``split`` and their score, with the model's evaluation settings: AP with its
    bootstrap interval (``evaluation.bootstrap_resamples``) and, with ``evaluation.protocol=kitti``, KITTI's protocol
    against the split's own label files."""
    spec = predictor.spec
    dataset = ConvertedDataset(converted_dir, verify=False)
    data_classes = dataset.classes
    if list(data_classes) != list(spec.classes):
        raise ConfigError(
            "dataset.target_class_mapping",
            data_classes,
            f"the model's classes in the same order: {', '.join(spec.classes)}",
        )
    loader = split_loader(converted_dir, split, spec.preprocessing, spec.evaluation.batch_size)

    def bar(items):
        return tqdm(items, desc="evaluate", unit="batch", disable=None if progress else True)

    ev = evaluate_batches(
        loader, predictor.outputs, predictor.postprocessor, spec.evaluator(), progress=bar, intervals=True
    )
    if spec.evaluation.protocol is EvaluationProtocol.kitti:
        # the devkit's rules need the label files as they are (source classes, DontCare) and boxes in their pixels
        sizes = dataset.split(split).image_sizes
        found = [predictor.to_image_coordinates(d, int(w), int(h)) for d, (w, h) in zip(ev.detections, sizes)]
        truths = [Truth.read(p) for p in dataset.label_paths(split)]
        ev.result.extra.update(kitti_metrics(truths, found, spec.classes, spec.evaluation.kitti_recall_points))
    return ev
