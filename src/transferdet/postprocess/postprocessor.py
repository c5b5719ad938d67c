"""Post-processing of DetectNet_v2 outputs, batched over images and classes where it can be.

Thresholding and decoding run on the whole batch at once; clustering then runs per image and class, on at
most ``max_candidates`` cells of each (the highest coverages), so its cost has a bound whatever the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transferdet.config.schema import ClusteringAlgorithm, ClusteringConfig, PostprocessingConfig
from transferdet.postprocess.clustering import Group, cluster_dbscan, cluster_hybrid, cluster_nms, dbscan_labels
from transferdet.structures import Detections

CLUSTERERS = {
    ClusteringAlgorithm.dbscan: cluster_dbscan,
    ClusteringAlgorithm.nms: cluster_nms,
    ClusteringAlgorithm.hybrid: cluster_hybrid,
}
NEEDS_DBSCAN = (ClusteringAlgorithm.dbscan, ClusteringAlgorithm.hybrid)


def decode_boxes(
    bbox: np.ndarray, stride: float, scale: float, offset: float, width: float, height: float
) -> np.ndarray:
    """Absolute boxes from bbox outputs (SPEC section 4), clipped to the canvas.

    ``bbox`` is ``[..., 4, H, W]`` (L, T, R, B per cell); the result is ``[..., 4, H, W]`` x1 y1 x2 y2 with
    the anchor at the cell's corner pixel g = index * stride + offset:
    x1 = gx - S*L, y1 = gy - S*T, x2 = gx + S*R, y2 = gy + S*B.
    """
    h, w = bbox.shape[-2:]
    gx = (np.arange(w, dtype=np.float32) * stride + offset)[None, :]  # [1, W]
    gy = (np.arange(h, dtype=np.float32) * stride + offset)[:, None]  # [H, 1]
    x1 = np.clip(gx - scale * bbox[..., 0, :, :], 0, width)
    y1 = np.clip(gy - scale * bbox[..., 1, :, :], 0, height)
    x2 = np.clip(gx + scale * bbox[..., 2, :, :], x1, width)
    y2 = np.clip(gy + scale * bbox[..., 3, :, :], y1, height)
    return np.stack([x1, y1, x2, y2], axis=-3)


def confidence_threshold(cfg: ClusteringConfig) -> float:
    """The one confidence threshold of an algorithm, used the same way in validation, evaluate and infer."""
    return (
        cfg.nms_confidence_threshold
        if cfg.clustering_algorithm in (ClusteringAlgorithm.nms, ClusteringAlgorithm.hybrid)
        else cfg.dbscan_confidence_threshold
    )


class Postprocessor:
    """Turns ``cov [B, C, H, W]`` and ``bbox [B, 4C, H, W]`` into one :class:`Detections` per image.

    Boxes are in pixels of the network input canvas (``width`` x ``height``).
    """

    def __init__(
        self,
        classes: Sequence[str],
        cfg: PostprocessingConfig,
        *,
        width: int,
        height: int,
        stride: int = 16,
        bbox_scale: float = 35.0,
        bbox_offset: float = 0.5,
    ) -> None:
        self.classes = list(classes)
        self.clustering = [cfg.target_class_config[c].clustering_config for c in self.classes]
        self.width, self.height = width, height
        self.stride, self.scale, self.offset = stride, bbox_scale, bbox_offset

    def __call__(self, cov: np.ndarray, bbox: np.ndarray) -> list[Detections]:
        cov = np.asarray(cov, np.float32)
        bbox = np.asarray(bbox, np.float32)
        b, c, h, w = cov.shape
        if c != len(self.classes) or bbox.shape != (b, 4 * c, h, w):
            raise ValueError(
                f"expected cov [B, {len(self.classes)}, H, W] and bbox [B, {4 * len(self.classes)}, H, W],"
                f" got {cov.shape} and {bbox.shape}"
            )
        boxes = decode_boxes(
            bbox.reshape(b, c, 4, h, w), self.stride, self.scale, self.offset, self.width, self.height
        )  # [B, C, 4, H, W]
        thresholds = np.array([cc.coverage_threshold for cc in self.clustering], np.float32)[None, :, None, None]
        candidate = cov > thresholds  # [B, C, H, W]
        groups: list[tuple[int, int, Group]] = []  # (image, class, candidates)
        for i in range(b):
            for k, cc in enumerate(self.clustering):
                ys, xs = np.nonzero(candidate[i, k])
                if cc.max_candidates and len(ys) > cc.max_candidates:
                    # the highest coverages, kept in grid order (clustering's numbering follows that order)
                    top = np.sort(np.argpartition(-cov[i, k, ys, xs], cc.max_candidates - 1)[: cc.max_candidates])
                    ys, xs = ys[top], xs[top]
                if len(ys):
                    groups.append(
                        (
                            i,
                            k,
                            Group(
                                boxes[i, k][:, ys, xs].T.astype(np.float64), cov[i, k, ys, xs].astype(np.float64), cc
                            ),
                        )
                    )
        clustered = [g for _, _, g in groups if g.cfg.clustering_algorithm in NEEDS_DBSCAN]
        labels = dict(zip(map(id, clustered), dbscan_labels(clustered)))

        per_image: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in range(b)]
        for i, k, g in groups:
            found, conf = CLUSTERERS[g.cfg.clustering_algorithm](g, labels.get(id(g)))
            keep = ((found[:, 3] - found[:, 1]) >= g.cfg.minimum_bounding_box_height) & (
                conf >= confidence_threshold(g.cfg)
            )
            per_image[i].append((found[keep], conf[keep], k))
        out = []
        for found in per_image:
            if not found:
                out.append(Detections.empty())
                continue
            bx = np.concatenate([f[0] for f in found])
            cf = np.concatenate([f[1] for f in found])
            cl = np.concatenate([np.full(len(f[1]), f[2]) for f in found])
            order = np.argsort(-cf, kind="stable")
            out.append(Detections(bx[order], cl[order], cf[order]))
        return out
