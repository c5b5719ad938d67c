"""Pictures for people: images with predicted (solid) and true (thin) boxes, and grids of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from transferdet.structures import Detections, GroundTruth
from transferdet.utils.io import atomic_path

COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255), (255, 150, 60)]
IGNORE_COLOUR = (160, 160, 160)


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """A [3, H, W] float tensor in [0, 1] or an [H, W, 3] uint8 array as a PIL image."""
    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(image))


def draw_detections(
    image, det: Detections | None, gt: GroundTruth | None, classes: Sequence[str], min_score: float = 0.0
) -> Image.Image:
    """An image with detections (and ground truth, dashed) drawn, as a PIL image."""
    im = to_pil(image).copy()
    d = ImageDraw.Draw(im)
    if gt is not None:
        for box, k in zip(gt.boxes, gt.class_ids):
            colour = IGNORE_COLOUR if k < 0 else COLOURS[int(k) % len(COLOURS)]
            d.rectangle([float(v) for v in box], outline=colour, width=1)
    if det is not None:
        for box, k, s in zip(det.boxes, det.class_ids, det.scores):
            if s < min_score:
                continue
            colour = COLOURS[int(k) % len(COLOURS)]
            d.rectangle([float(v) for v in box], outline=colour, width=2)
            d.text((float(box[0]) + 2, max(float(box[1]) - 11, 0)), f"{classes[int(k)]} {s:.2f}", fill=colour)
    return im


def save_grid(images: Sequence[Image.Image], path: Path, columns: int = 2) -> None:
    """Images tiled into one PNG, ``columns`` wide."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (w * columns, h * rows))
    for n, im in enumerate(images):
        grid.paste(im, ((n % columns) * w, (n // columns) * h))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
