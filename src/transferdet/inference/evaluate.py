"""A predictor scored on a split of a converted dataset, through the one evaluation loop."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from transferdet.data.converted import ConvertedDataset
from transferdet.data.loader import split_loader
from transferdet.errors import ConfigError
from transferdet.evaluation.loop import Evaluation, evaluate_batches
from transferdet.inference.predictor import Predictor


def evaluate_predictor(
    predictor: Predictor, converted_dir: str | Path, split: str = "val", progress: bool = True
) -> Evaluation:
    """Detections of ``predictor`` on ``split`` and their score, with the model's evaluation settings."""
    spec = predictor.spec
    data_classes = ConvertedDataset(converted_dir, verify=False).classes
    if list(data_classes) != list(spec.classes):
        raise ConfigError(
            "dataset.target_class_mapping",
            data_classes,
            f"the model's classes in the same order: {', '.join(spec.classes)}",
        )
    loader = split_loader(converted_dir, split, spec.preprocessing, spec.evaluation.batch_size)

    def bar(items):
        return tqdm(items, desc="evaluate", unit="batch", disable=None if progress else True)

    return evaluate_batches(loader, predictor.outputs, predictor.postprocessor, spec.evaluator(), progress=bar)
