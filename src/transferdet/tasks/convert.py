"""``transferdet convert``: validate, partition and convert a KITTI dataset, and write its report."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config import typed
from transferdet.data.convert import SPLITS, normalised_mapping, write_converted
from transferdet.data.converted import ConvertedDataset, converted_dir_for
from transferdet.data.kitti import scan_dataset
from transferdet.data.report import metrics_of, write_report
from transferdet.utils.io import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)


def convert(cfg: DictConfig) -> tuple[Path, dict]:
    """Convert ``cfg.dataset``; returns the converted folder and the report summary."""
    d = typed(cfg, "dataset")
    records, warnings = scan_dataset(d.root, d.image_dir_name, d.label_dir_name, d.image_extension)
    out = converted_dir_for(d)
    # the whole folder is built under a temporary name and renamed when complete
    with atomic_dir(out) as tmp:
        manifest = write_converted(tmp, records, warnings, d)
        write_json_atomic(tmp / "manifest.json", manifest)
        converted = ConvertedDataset(tmp, verify=False)
        splits = {s: converted.split(s) for s in SPLITS}
        summary = write_report(tmp, splits, converted.classes, records, normalised_mapping(d), warnings, str(d.root))
    return out, summary


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    classes = summary["classes"]
    table = Table(title="dataset")
    for col in ["split", "images", *classes, "ignore regions"]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in SPLITS:
        s = summary["splits"][split]
        table.add_row(
            split, str(s["num_images"]), *(str(s["num_objects"][c]) for c in classes), str(s["num_ignore_regions"])
        )
    Console(stderr=True).print(table)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    out, summary = convert(cfg)
    print_summary(summary)
    if summary["num_warnings"]:
        log.warning("%d warnings (objects dropped or clipped): see %s", summary["num_warnings"], out / "warnings.txt")
    log.info("converted dataset: %s (report: %s)", out, out / "report.md")
    return metrics_of(summary)
