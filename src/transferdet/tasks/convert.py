"""``transferdet convert``: validate, partition and convert a KITTI dataset, and write its report."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from transferdet.config.validate import typed
from transferdet.data.convert import SPLITS
from transferdet.data.prepare import convert_dataset
from transferdet.data.report import metrics_of

log = logging.getLogger(__name__)


def print_summary(summary: dict) -> None:
    """The dataset table (images and objects per split and class) on the terminal."""
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
    """Convert ``dataset`` and report it."""
    out, summary = convert_dataset(typed(cfg, "dataset"))
    print_summary(summary)
    if summary["num_warnings"]:
        log.warning("%d warnings (objects dropped or clipped): see %s", summary["num_warnings"], out / "warnings.txt")
    log.info("converted dataset: %s (report: %s)", out, out / "report.md")
    return metrics_of(summary)
