"""Joint image + box transforms (SPEC section 2), on torchvision transforms v2 with bounding-box tensors.

One :class:`Augmenter` call takes a decoded image and its boxes and returns the network input
(float RGB in [0, 1], ``output_image_height`` x ``output_image_width``) with the boxes moved along:

* preprocessing (always): pad right/bottom with zeros and crop (random offset in training, top-left
  otherwise), or ``resize: true`` to scale instead;
* spatial augmentation (training): horizontal flip, zoom (r > 1 zooms in: objects get bigger),
  integer translation, rotation, as one affine about the canvas centre; uncovered pixels are 0;
* colour augmentation (training, 3 channels): contrast -> hue rotation and saturation (YIQ) ->
  brightness, as one 3x3 matrix and offset, clipped to [0, 1].

Boxes are transformed as their enclosing rectangle, clipped to the canvas, and dropped when outside it
or (objects, not ignore regions) smaller than ``min_bbox_width`` x ``min_bbox_height``. Random draws
come from a generator seeded by (seed, epoch, sample index): a run is reproducible whatever the number
of data-loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from transferdet.config.schema import AugmentationConfig

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass
class Sample:
    image: torch.Tensor  # [3, H, W] float32 in [0, 1]
    boxes: torch.Tensor  # [N, 4] x1 y1 x2 y2 canvas pixels
    keep: torch.Tensor  # [N] bool: which of the input boxes survived (same order)


def _truncated_normal(rng: np.random.Generator, sigma: float, limit: float) -> float:
    if sigma <= 0 or limit <= 0:
        return 0.0
    return float(np.clip(rng.normal(0.0, sigma), -limit, limit))


def color_matrix(rng: np.random.Generator, cfg) -> tuple[np.ndarray, np.ndarray]:
    """3x3 matrix M and offset o of one colour augmentation: p' = M p + o."""
    c = _truncated_normal(rng, cfg.contrast_scale_max / 2, cfg.contrast_scale_max)
    hue = math.radians(_truncated_normal(rng, cfg.hue_rotation_max / 2, cfg.hue_rotation_max))
    sat = 1.0 + rng.uniform(-cfg.saturation_shift_max, cfg.saturation_shift_max)
    rot = np.array(
        [[1, 0, 0], [0, sat * math.cos(hue), -sat * math.sin(hue)], [0, sat * math.sin(hue), sat * math.cos(hue)]]
    )
    hue_sat = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    brightness = rng.normal(0.0, cfg.color_shift_stddev) if cfg.color_shift_stddev > 0 else 0.0
    matrix = hue_sat * (1.0 + c)
    offset = hue_sat @ np.full(3, -c * cfg.contrast_center) + brightness
    return matrix, offset


class Augmenter:
    def __init__(self, cfg: AugmentationConfig, *, train: bool, seed: int = 0) -> None:
        self.cfg, self.train, self.seed = cfg, train, seed
        self.width = cfg.preprocessing.output_image_width
        self.height = cfg.preprocessing.output_image_height

    def preprocess(self, image: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
        """An image alone (no boxes) as the network takes it: ``[C, H, W]`` float in [0, 1], also written into
        ``out`` (a ``[C, H, W]`` float32 array: a batch's slot, so that a batch needs no stacking copy).

        Without augmentation this is the evaluation path of ``__call__`` (resize, or pad right/bottom
        with 0 and crop top-left) on a plain tensor: the same pixels, without the box bookkeeping, which
        costs more than the pixels themselves for a small image (inference takes this path).
        """
        pre, W, H = self.cfg.preprocessing, self.width, self.height
        in_place = out is not None and not self.train and not pre.resize and pre.output_image_channel == 3
        if self.train:
            result = self(image, np.zeros((0, 4), np.float32), np.zeros(0, bool), 0).image
        elif pre.resize:
            img = F.resize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), [H, W], antialias=True)
            result = F.to_dtype(img, torch.float32, scale=True)
        else:  # crop and pad, transpose and scale in one pass over the pixels (the same floats as to_dtype's)
            h, w = min(H, image.shape[0]), min(W, image.shape[1])
            canvas = out if in_place else np.empty((3, H, W), np.float32)
            canvas[:, h:] = 0  # only the padding: zeroing all of a 1248x384 canvas costs a fifth of the pass
            canvas[:, :h, w:] = 0
            np.multiply(image[:h, :w].transpose(2, 0, 1), np.float32(1 / 255), out=canvas[:, :h, :w])
            result = torch.from_numpy(canvas)
        if pre.output_image_channel == 1:
            result = (0.299 * result[0] + 0.587 * result[1] + 0.114 * result[2])[None]
        result = result.contiguous()
        if out is not None and not in_place:
            out[...] = result.numpy()
        return result

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, is_object: np.ndarray, index: int, epoch: int = 0
    ) -> Sample:
        """``image [h, w, 3]`` uint8 RGB; ``boxes [N, 4]`` pixels; ``is_object [N]`` (False = ignore region)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        pre, W, H = self.cfg.preprocessing, self.width, self.height
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        h, w = img.shape[-2:]
        bx = tv_tensors.BoundingBoxes(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        )
        if pre.resize:
            img, bx = F.resize(img, [H, W], antialias=True), F.resize(bx, [H, W])
        else:
            if h < H or w < W:
                pad = [0, 0, max(W - w, 0), max(H - h, 0)]  # left, top, right, bottom
                img, bx = F.pad(img, pad, fill=0), F.pad(bx, pad)
                h, w = img.shape[-2:]
            top = int(rng.integers(0, h - H + 1)) if self.train else 0
            left = int(rng.integers(0, w - W + 1)) if self.train else 0
            img, bx = F.crop(img, top, left, H, W), F.crop(bx, top, left, H, W)

        if self.train:
            s = self.cfg.spatial_augmentation
            if rng.random() < s.hflip_probability:
                img, bx = F.horizontal_flip(img), F.horizontal_flip(bx)
            zoom = float(rng.uniform(s.zoom_min, s.zoom_max))
            tx = int(rng.integers(-int(s.translate_max_x), int(s.translate_max_x) + 1))
            ty = int(rng.integers(-int(s.translate_max_y), int(s.translate_max_y) + 1))
            angle = (
                math.degrees(rng.uniform(-s.rotate_rad_max, s.rotate_rad_max))
                if s.rotate_rad_max > 0 and rng.random() < s.rotate_probability
                else 0.0
            )
            if zoom != 1.0 or tx or ty or angle:
                args = dict(angle=-angle, translate=[tx, ty], scale=zoom, shear=[0.0, 0.0], center=[W / 2, H / 2])
                img = F.affine(img, **args, interpolation=InterpolationMode.BILINEAR, fill=0)
                bx = F.affine(bx, **args)

        out = F.to_dtype(img, torch.float32, scale=True)
        if self.train and pre.output_image_channel == 3:
            m, o = color_matrix(rng, self.cfg.color_augmentation)
            out = (
                torch.einsum("ij,jhw->ihw", torch.from_numpy(m).float(), out)
                + torch.from_numpy(o).float()[:, None, None]
            ).clamp_(0.0, 1.0)
        if pre.output_image_channel == 1:
            out = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2])[None]

        b = torch.as_tensor(bx).clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, W)
        b[:, 1::2] = b[:, 1::2].clamp(0, H)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        obj = torch.as_tensor(is_object, dtype=torch.bool)
        keep = (bw > 0) & (bh > 0) & (~obj | ((bw >= pre.min_bbox_width) & (bh >= pre.min_bbox_height)))
        return Sample(out.contiguous(), b[keep], keep)
