"""``transferdet synth``: write a synthetic KITTI-layout dataset to ``dataset.root``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config import typed
from transferdet.config.structured import to_plain
from transferdet.data.synth import generate
from transferdet.errors import ConfigError
from transferdet.utils.io import atomic_dir, check_replaceable, write_json_atomic

log = logging.getLogger(__name__)

# written into the dataset: the settings it was generated with, and its object counts
RECORD = "synth.json"


# settings added after datasets were first written: a record without them was made with these values
LATER_DEFAULTS = {
    "style": "flat",
    "object_height_median": None,
    "object_height_spread": 0.65,
    "blur_max": 0.0,
    "jpeg_quality_min": 100,
}


def _settings(cfg: DictConfig) -> dict:
    dataset, synth = typed(cfg, "dataset"), typed(cfg, "synth")
    settings = to_plain(synth)
    settings.pop("overwrite")
    settings.update(image_dir_name=dataset.image_dir_name, label_dir_name=dataset.label_dir_name)
    return settings


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Write the synthetic dataset, or do nothing when ``dataset.root`` holds the same one."""
    dataset, synth = typed(cfg, "dataset"), typed(cfg, "synth")
    root = Path(dataset.root)
    settings = _settings(cfg)
    if root.is_dir() and any(root.iterdir()) and not synth.overwrite:
        try:
            previous = json.loads((root / RECORD).read_text())
        except (OSError, ValueError):
            previous = {}
        if {**LATER_DEFAULTS, **previous.get("settings", {})} != settings:
            raise ConfigError(
                "dataset.root",
                str(root),
                "a folder that does not exist, is empty, or holds a synthetic dataset made with the "
                "same synth settings (or set synth.overwrite=true to replace it)",
            )
        log.info("%s already holds this synthetic dataset; nothing to do", root)
        counts = previous["counts"]
    else:
        # overwrite replaces a synthetic dataset only; written to a temporary folder and renamed when
        # complete: an interrupted run leaves nothing behind
        check_replaceable(root, "dataset.root", lambda f: (f / RECORD).is_file(), "a synthetic dataset (synth.json)")
        with atomic_dir(root) as tmp:
            counts = generate(synth, tmp, dataset.image_dir_name, dataset.label_dir_name)
            write_json_atomic(tmp / RECORD, {"settings": settings, "counts": counts})
        log.info(
            "wrote %d images (%s) to %s",
            synth.num_images,
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            root,
        )
    metrics = {"dataset/num_images": synth.num_images}
    metrics.update({f"dataset/num_objects/{k}": v for k, v in sorted(counts.items())})
    return metrics
