"""Test-time flip: a network's outputs averaged with those of the mirrored image.

The mirrored image goes through the network in the same batch; its maps are mirrored back and its box
outputs converted to the original image's anchors before the average. A box of the mirrored image is
``[W - x2, W - x1]``; with the anchor of cell ``j`` at ``g = j * stride + offset`` and cell ``j`` mirrored to
``w - 1 - j``, the left distance of a cell is the mirrored cell's right distance plus
``(2 * offset - stride) / scale`` (the anchor sits at the cell's corner, not its centre), and the right
distance its left one minus that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Maps = tuple[np.ndarray, np.ndarray]  # cov [B, C, H, W], bbox [B, 4C, H, W] (numpy, or tensors on a device)
Outputs = Callable[[torch.Tensor], Maps]  # a network: preprocessed batch -> maps


def unflip(cov: np.ndarray, bbox: np.ndarray, stride: int, scale: float, offset: float) -> Maps:
    """The outputs of a mirrored image (``cov [B, C, H, W]``, ``bbox [B, 4C, H, W]``; numpy arrays or tensors)
    as the original image's."""
    b, c, h, w = cov.shape
    tensors = isinstance(cov, torch.Tensor)
    mirrored = (bbox.flip(-1) if tensors else bbox[..., ::-1]).reshape(b, c, 4, h, w)
    shift = (2 * offset - stride) / scale
    left, top, right, bottom = (mirrored[:, :, j] for j in range(4))
    parts = [right + shift, top, left - shift, bottom]
    if tensors:
        return cov.flip(-1), torch.stack(parts, 2).reshape(b, 4 * c, h, w)
    ltrb = np.stack(parts, axis=2)
    return np.ascontiguousarray(cov[..., ::-1]), ltrb.reshape(b, 4 * c, h, w).astype(np.float32, copy=False)


def flip_averaged(run: Outputs, stride: int, scale: float, offset: float) -> Outputs:
    """``run`` on a batch and its mirror image at once, the two outputs averaged: twice the network's work."""

    def outputs(batch: torch.Tensor) -> Maps:
        n = batch.shape[0]
        cov, bbox = run(torch.cat([batch, batch.flip(-1)]))
        cov_m, bbox_m = unflip(cov[n:], bbox[n:], stride, scale, offset)
        return (cov[:n] + cov_m) / 2, (bbox[:n] + bbox_m) / 2

    return outputs
