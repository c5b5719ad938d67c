"""A dataset ready for training or evaluation: converted once, reused while it matches.

:func:`convert_dataset` validates, partitions and converts a KITTI-layout dataset (``transferdet convert``);
:func:`ensure_converted` is what every other task calls: it reuses the converted folder when it was made
from the same settings and converts otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from transferdet.config.schema import DatasetConfig
from transferdet.config.structured import from_plain
from transferdet.config.validate import target_classes
from transferdet.data.convert import SPLITS, normalised_mapping, write_converted
from transferdet.data.converted import ConvertedDataset, converted_dir_for, is_conversion
from transferdet.data.kitti import scan_dataset
from transferdet.data.report import write_report
from transferdet.detector import checkpoint
from transferdet.errors import ConfigError, DataError
from transferdet.utils.dist import is_global_zero
from transferdet.utils.io import atomic_dir, check_replaceable, write_json_atomic

log = logging.getLogger(__name__)


def convert_dataset(d: DatasetConfig) -> tuple[Path, dict]:
    """Convert ``d``; returns the converted folder and the report summary. The folder is built under a
    temporary name and renamed when complete."""
    out = converted_dir_for(d)
    check_replaceable(out, "dataset.converted_dir", is_conversion, "a conversion transferdet wrote (manifest.json)")
    records, warnings = scan_dataset(d.root, d.image_dir_name, d.label_dir_name, d.image_extension)
    with atomic_dir(out) as tmp:
        manifest = write_converted(tmp, records, warnings, d)
        write_json_atomic(tmp / "manifest.json", manifest)
        converted = ConvertedDataset(tmp, verify=False)
        splits = {s: converted.split(s) for s in SPLITS}
        summary = write_report(tmp, splits, converted.classes, records, normalised_mapping(d), warnings, str(d.root))
    return out, summary


def ensure_converted(d: DatasetConfig) -> Path:
    """The converted dataset for ``d``: reused while it holds ``d`` as it is (settings, class order, source
    files), else converted again (saying why)."""
    out = converted_dir_for(d)
    try:
        reason = ConvertedDataset(out).stale_reason(d)
    except DataError:  # none yet, or one this version cannot read
        reason = None if not out.exists() else "it is not a conversion this version can read"
    else:
        if reason is None:
            return out
    if reason:
        log.info("converting %s again: %s", out, reason)
    if not is_global_zero():  # DDP workers start after the launching process has converted
        raise DataError(out, "no converted dataset for these settings (the first process should have written it)")
    convert_dataset(d)
    return out


def dataset_for_model(
    d: DatasetConfig, model: str | Path | None, classes: Sequence[str] | None = None
) -> DatasetConfig:
    """The dataset a task runs a trained model on: ``d`` when the command line names one (``dataset.root``),
    else the one the model was trained on, as its checkpoint (or ONNX export) records it, and said so. With the
    model's ``classes``, a dataset of other classes (or another order) is refused before anything is converted."""
    if d.root is not None:
        _same_classes(d, classes)
        return d
    if model is None:
        raise ConfigError(
            "dataset.root", None, "a dataset folder (dataset.root=DIR; there is no model to take it from)"
        )
    recorded = checkpoint.trained_dataset(model)
    if recorded is None:
        raise ConfigError(
            "dataset.root",
            None,
            f"a dataset folder: {model} does not record the dataset it was trained "
            "on (dataset=kitti dataset.root=DIR for KITTI)",
        )
    try:
        dataset = from_plain(DatasetConfig, recorded, "dataset")
    except ConfigError as err:
        raise DataError(model, f"the recorded dataset settings do not fit this transferdet: {err}") from None
    log.info("dataset: %s, the one %s was trained on (dataset.root=DIR for another)", dataset.root, Path(model).name)
    _same_classes(dataset, classes)
    return dataset


def _same_classes(d: DatasetConfig, classes: Sequence[str] | None) -> None:
    if classes is not None and target_classes(d) != list(classes):
        raise ConfigError(
            "dataset.target_class_mapping",
            target_classes(d),
            f"the model's classes in the same order: {', '.join(classes)}",
        )
