"""INT8 calibration data: training images preprocessed exactly as the network sees them at inference.

The tensor file (TLT's ``tlt-int8-tensorfile``) is a ``.npy`` of float32 RGB in [0, 1], shape [N, 3, H, W]:
loading it runs no code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferdet.config.schema import AugmentationConfig, PreprocessingConfig
from transferdet.data.augment import Augmenter
from transferdet.data.converted import ConvertedDataset
from transferdet.data.images import load_rgb
from transferdet.errors import DataError
from transferdet.utils.io import atomic_path

log = logging.getLogger(__name__)
CALIBRATION_FILE = "calibration.npy"


def preprocessed(paths: Sequence[str | Path], preprocessing: PreprocessingConfig) -> np.ndarray:
    """Image files as the network takes them at inference: float32 [N, 3, H, W] in [0, 1]."""
    augmenter = Augmenter(AugmentationConfig(preprocessing=preprocessing), train=False)
    return np.stack([augmenter.preprocess(load_rgb(p)).numpy() for p in paths])


def calibration_images(converted_dir: str | Path, preprocessing: PreprocessingConfig, count: int) -> np.ndarray:
    """The first ``count`` training images of a seeded shuffle, preprocessed without augmentation."""
    split = ConvertedDataset(converted_dir).split("train")
    if len(split) == 0:
        raise DataError(converted_dir, "the training split has no images to calibrate with")
    order = np.random.default_rng(0).permutation(len(split))[:count]
    out = preprocessed([split[int(i)].image_path for i in order], preprocessing)
    if len(out) < count:
        log.warning("the training split has %d images, fewer than the %d asked for calibration", len(out), count)
    return out


def validation_sample(converted_dir: str | Path, preprocessing: PreprocessingConfig, count: int) -> np.ndarray:
    """The first ``count`` validation images, preprocessed (for output parity checks)."""
    val = ConvertedDataset(converted_dir).split("val")
    return preprocessed([val[i].image_path for i in range(min(count, len(val)))], preprocessing)


def save_calibration_file(path: str | Path, images: np.ndarray) -> None:
    """Write the tensors as a ``.npy`` (no pickles), complete or not at all."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, images, allow_pickle=False)


def load_calibration_file(path: str | Path, height: int, width: int) -> np.ndarray:
    """A calibration tensor file checked against the model's input size; DataError otherwise."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a calibration tensor file (.npy float32 [N, 3, H, W]): {err}") from None
    if not isinstance(data, np.ndarray):  # an .npz archive loads as a mapping of arrays
        raise DataError(path, "an .npz archive; a calibration tensor file is one .npy array float32 [N, 3, H, W]")
    if data.ndim != 4 or data.shape[1] != 3 or data.shape[2:] != (height, width) or data.dtype != np.float32:
        raise DataError(
            path,
            f"calibration tensors are {data.dtype} {list(data.shape)}; the model needs float32 "
            f"[N, 3, {height}, {width}]",
        )
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise DataError(path, "calibration tensors must be finite RGB values in [0, 1]")
    return data
