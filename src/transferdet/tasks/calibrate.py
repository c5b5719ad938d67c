"""``transferdet calibrate``: the INT8 calibration tensor file (TLT's ``tlt-int8-tensorfile``).

Writes ``calibration.npy``: ``batches x batch_size`` training images preprocessed exactly as the network
sees them at inference (no augmentation), float32 RGB in [0, 1], shape [N, 3, H, W]. The canvas is the
checkpoint's when ``checkpoint=`` is given (``augmentation.preprocessing.*`` overrides it), else
``augmentation.preprocessing``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import PreprocessingConfig
from transferdet.config.structured import from_plain
from transferdet.config.tasks import task_args
from transferdet.config.validate import typed
from transferdet.data.prepare import ensure_converted
from transferdet.detector import checkpoint
from transferdet.export.calibration import CALIBRATION_FILE, calibration_images, save_calibration_file
from transferdet.utils.rundir import write_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Write ``calibration.npy``."""
    args, c, overrides = task_args(cfg, "calibrate"), typed(cfg, "calibration"), DetectorOverrides.from_config(cfg)
    if args.checkpoint:
        spec = checkpoint.read_spec(args.checkpoint).with_overrides(overrides)
        write_config(run_dir, cfg, spec.as_config())
        preprocessing = spec.preprocessing
    else:
        preprocessing = from_plain(PreprocessingConfig, overrides.preprocessing, "augmentation.preprocessing")
    dataset = checkpoint.dataset_for_model(typed(cfg, "dataset"), args.checkpoint)
    images = calibration_images(ensure_converted(dataset), preprocessing, c.batches * c.batch_size)
    save_calibration_file(run_dir / CALIBRATION_FILE, images)
    log.info("wrote %d calibration images %s to %s", len(images), list(images.shape[1:]), run_dir / CALIBRATION_FILE)
    return {"calibration/num_images": len(images)}
