"""A dataset ready for training or evaluation: converted once, reused while it matches.

:func:`convert_dataset` validates, partitions and converts a KITTI-layout dataset (``transferdet convert``);
:func:`ensure_converted` is what every other task calls: it reuses the converted folder when it was made
from the same settings and converts otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transferdet.config.schema import DatasetConfig
from transferdet.data.convert import SPLITS, normalised_mapping, write_converted
from transferdet.data.converted import ConvertedDataset, converted_dir_for, is_conversion
from transferdet.data.kitti import scan_dataset
from transferdet.data.report import write_report
from transferdet.errors import DataError
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
