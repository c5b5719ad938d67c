"""COCO-style mAP@[.5:.95] through pycocotools, as an extra line next to the VOC/KITTI figures.

dontcare regions become COCO crowd regions (``iscrowd``) of every class, so detections inside them are
ignored there too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from transferdet.structures import Detections, GroundTruth


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]


def coco_map(gts: Sequence[GroundTruth], dets: Sequence[Detections], classes: Sequence[str]) -> dict[str, float]:
    """``{"mAP_coco": AP@[.5:.95], "AP50_coco": AP@.5}``; NaN when there is no ground truth at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (gt, det) in enumerate(zip(gts, dets)):
        images.append({"id": i})
        for box, k in zip(gt.boxes, gt.class_ids):
            cats = range(len(classes)) if k < 0 else [int(k)]
            for c in cats:
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": c + 1,
                        "bbox": _xywh(box),
                        "area": w * h,
                        "iscrowd": int(k < 0),
                    }
                )
        for box, k, s in zip(det.boxes, det.class_ids, det.scores):
            results.append({"image_id": i, "category_id": int(k) + 1, "bbox": _xywh(box), "score": float(s)})
    if not any(a["iscrowd"] == 0 for a in annotations):
        return {"mAP_coco": float("nan"), "AP50_coco": float("nan")}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        if not results:
            return {"mAP_coco": 0.0, "AP50_coco": 0.0}
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP_coco": float(max(ev.stats[0], 0.0)), "AP50_coco": float(max(ev.stats[1], 0.0))}
