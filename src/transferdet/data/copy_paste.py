"""Copy-paste augmentation (not in TLT): objects of other training images pasted into a training image.

A fixed camera (KITTI's) sees a car at a given place in the frame at a given size, so an object cut from
one frame is pasted at the same place in another (or mirrored across the frame's width), where it is as
plausible in size and position as where it was. The bank is built once from the training split: whole,
unoccluded objects (``max_occlusion``, ``max_truncation``, ``min_height``), their pixels cut with a
margin that blends into the target over ``FEATHER`` pixels. A paste never covers another box of the
target (object or ignore region), so the labels stay true: nothing pasted hides anything labelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from transferdet.boxes import intersections
from transferdet.config.schema import CopyPasteConfig
from transferdet.data.converted import SplitIndex
from transferdet.data.images import load_rgb

log = logging.getLogger(__name__)

FEATHER = 3  # pixels of the margin cut around an object, blended linearly into the target


@dataclass
class Pasteable:
    """One object of the bank: its pixels with the margin, and its box in the source frame."""

    pixels: np.ndarray  # [h, w, 3] uint8, the box grown by up to FEATHER on each side
    alpha: np.ndarray  # [h, w, 1] float32: 1 inside the box, falling to 0 at the margin's edge
    origin: tuple[int, int]  # x, y of the cut's top-left corner in the source frame
    box: np.ndarray  # [4] float32 x1 y1 x2 y2 in the source frame
    class_id: int
    truncated: float
    occluded: int


def _ramp(n: int, inner0: int, inner1: int) -> np.ndarray:
    """1 on [inner0, inner1), falling linearly to 0 over FEATHER + 1 pixels outside it."""
    i = np.arange(n, dtype=np.float32)
    dist = np.maximum(np.maximum(inner0 - i, i - (inner1 - 1)), 0)
    return np.clip(1.0 - dist / (FEATHER + 1), 0.0, 1.0)


class ObjectBank:
    """The objects copy-paste takes from: up to ``bank_size`` eligible objects of a split, their pixels
    decoded once (a seeded choice where there are more)."""

    def __init__(self, index: SplitIndex, cfg: CopyPasteConfig, seed: int = 0) -> None:
        self.cfg = cfg
        eligible = []  # (image, object) pairs
        for i in range(len(index)):
            s = index[i]
            h = s.boxes[:, 3] - s.boxes[:, 1]
            ok = (
                (s.class_ids >= 0)
                & (s.occluded <= cfg.max_occlusion)
                & (s.truncated <= cfg.max_truncation)
                & (h >= cfg.min_height)
                & (s.boxes[:, 2] > s.boxes[:, 0])
            )
            eligible += [(i, j) for j in np.flatnonzero(ok)]
        if len(eligible) > cfg.bank_size:
            pick = np.random.default_rng([seed, 0xC0FFEE]).choice(len(eligible), cfg.bank_size, replace=False)
            eligible = [eligible[k] for k in np.sort(pick)]
        self.objects: list[Pasteable] = []
        current, image = -1, None
        for i, j in eligible:  # in image order: each image decoded once
            if i != current:
                current, image = i, load_rgb(index[i].image_path)
            self.objects.append(self._cut(image, index[i], j))
        self.num_images = len({i for i, _ in eligible})
        log.info("copy-paste: %d objects from %d training images", len(self.objects), self.num_images)

    @staticmethod
    def _cut(image: np.ndarray, s, j: int) -> Pasteable:
        h, w = image.shape[:2]
        box = s.boxes[j].astype(np.float32)
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        cx1, cy1, cx2, cy2 = max(x1 - FEATHER, 0), max(y1 - FEATHER, 0), min(x2 + FEATHER, w), min(y2 + FEATHER, h)
        alpha = _ramp(cy2 - cy1, y1 - cy1, y2 - cy1)[:, None] * _ramp(cx2 - cx1, x1 - cx1, x2 - cx1)[None, :]
        return Pasteable(
            image[cy1:cy2, cx1:cx2].copy(),
            alpha[:, :, None],
            (cx1, cy1),
            box,
            int(s.class_ids[j]),
            float(s.truncated[j]),
            int(s.occluded[j]),
        )

    def paste(
        self, image: np.ndarray, boxes: np.ndarray, labels: dict[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """``image [h, w, 3]`` with up to ``max_objects`` objects pasted (with ``probability``), ``boxes [N, 4]``
        with theirs appended, and the per-box ``labels`` arrays (``class_ids``, ``truncated``, ``occluded``)
        extended likewise. The input arrays are not changed."""
        if not self.objects or rng.random() >= self.cfg.probability:
            return image, boxes, labels
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        taken = boxes  # the boxes a paste may not cover: the target's, then each paste's cut
        added = []  # (box, the object) of each paste
        out = None
        for _ in range(self.cfg.max_objects):
            obj = self.objects[int(rng.integers(len(self.objects)))]
            mirror = bool(rng.random() < 0.5)
            ph, pw = obj.pixels.shape[:2]
            ox, oy = obj.origin
            if mirror:  # the cut reflected across the target's vertical centre line
                ox = w - (ox + pw)
            if ox < 0 or oy < 0 or ox + pw > w or oy + ph > h:
                continue
            cut = np.array([ox, oy, ox + pw, oy + ph], np.float32)
            if (intersections(cut[None], taken) > 0).any():
                continue
            pixels, alpha = (obj.pixels[:, ::-1], obj.alpha[:, ::-1]) if mirror else (obj.pixels, obj.alpha)
            if out is None:
                out = image.copy()
            region = out[oy : oy + ph, ox : ox + pw]
            region[:] = np.rint(alpha * pixels + (1.0 - alpha) * region).astype(np.uint8)
            box = obj.box.copy()
            if mirror:
                box[[0, 2]] = w - obj.box[[2, 0]]
            taken = np.concatenate([taken, cut[None]])
            added.append((box, obj))
        if not added:
            return image, boxes, labels
        new_boxes = np.concatenate([boxes, np.stack([b for b, _ in added])])
        new_labels = {
            key: np.concatenate([labels[key], [getattr(obj, attr) for _, obj in added]]).astype(labels[key].dtype)
            for key, attr in (("class_ids", "class_id"), ("truncated", "truncated"), ("occluded", "occluded"))
        }
        return out, new_boxes, new_labels
