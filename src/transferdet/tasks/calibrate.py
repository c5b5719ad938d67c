"""``transferdet calibrate``: the INT8 calibration tensor file (TLT's ``tlt-int8-tensorfile``).

Writes ``calibration.npy``: ``batches x batch_size`` training images preprocessed exactly as the network
sees them at inference (no augmentation), float32 RGB in [0, 1], shape [N, 3, H, W]. The canvas is the
checkpoint's when ``checkpoint=`` is given, else ``augmentation.preprocessing``'s. A ``.npy`` holds only
an array: loading it runs no code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from transferdet.config import typed
from transferdet.config.schema import AugmentationConfig
from transferdet.errors import DataError
from transferdet.utils.io import atomic_path

log = logging.getLogger(__name__)
CALIBRATION_FILE = "calibration.npy"


def preprocessed(paths: list, augmentation: AugmentationConfig) -> np.ndarray:
    """Image files as the network takes them at inference: float32 [N, 3, H, W] in [0, 1]."""
    from transferdet.data.augment import Augmenter
    from transferdet.data.loader import load_rgb

    augmenter = Augmenter(augmentation, train=False)
    return np.stack([augmenter.preprocess(load_rgb(p)).numpy() for p in paths])


def calibration_images(cfg: DictConfig, augmentation: AugmentationConfig, count: int) -> np.ndarray:
    """The first ``count`` training images of a seeded shuffle, preprocessed without augmentation."""
    from transferdet.data.converted import ConvertedDataset
    from transferdet.tasks.train import ensure_converted

    split = ConvertedDataset(ensure_converted(cfg)).split("train")
    if len(split) == 0:
        raise DataError(cfg.dataset.root, "the training split has no images to calibrate with")
    order = np.random.default_rng(0).permutation(len(split))[:count]
    out = preprocessed([split[int(i)].image_path for i in order], augmentation)
    if len(out) < count:
        log.warning("the training split has %d images, fewer than the %d asked for calibration", len(out), count)
    return out


def load_calibration_file(path: str | Path, height: int, width: int) -> np.ndarray:
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a calibration tensor file (.npy float32 [N, 3, H, W]): {err}") from None
    if data.ndim != 4 or data.shape[1] != 3 or data.shape[2:] != (height, width) or data.dtype != np.float32:
        raise DataError(
            path,
            f"calibration tensors are {data.dtype} {list(data.shape)}; the model needs float32 "
            f"[N, 3, {height}, {width}]",
        )
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise DataError(path, "calibration tensors must be finite RGB values in [0, 1]")
    return data


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    c = typed(cfg, "calibration")
    augmentation = typed(cfg, "augmentation")
    if cfg.get("checkpoint"):
        from transferdet.inference.predictor import load_module

        augmentation = load_module(cfg.checkpoint).aug
    images = calibration_images(cfg, augmentation, c.batches * c.batch_size)
    path = run_dir / CALIBRATION_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
    log.info("wrote %d calibration images %s to %s", len(images), list(images.shape[1:]), path)
    return {"calibration/num_images": len(images)}
