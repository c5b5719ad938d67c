"""Post-processing of DetectNet_v2 outputs, batched over images and classes where it can be.

Thresholding and decoding run on the whole batch at once; clustering then runs per image and class, on at
most ``max_candidates`` cells of each (the highest coverages), so its cost has a bound whatever the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from transferdet.config.schema import ClusteringAlgorithm, ClusteringConfig, ConfidenceModel, PostprocessingConfig
from transferdet.postprocess.clustering import (
    Group,
    cluster_hybrid,
    cluster_nms,
    dbscan_segments,
    dbscan_tensor,
    fuse_overlapping,
    merge,
)
from transferdet.structures import Detections

# the algorithms that run image by image and class by class (DBSCAN's clusters are merged for the whole batch)
CLUSTERERS = {
    ClusteringAlgorithm.nms: cluster_nms,
    ClusteringAlgorithm.hybrid: cluster_hybrid,
}
NEEDS_DBSCAN = (ClusteringAlgorithm.dbscan, ClusteringAlgorithm.hybrid)


def corners(
    gx: np.ndarray, gy: np.ndarray, ltrb: Sequence[np.ndarray], scale: float, width: float, height: float
) -> tuple[np.ndarray, ...]:
    """x1 y1 x2 y2 of the cells anchored at ``gx``, ``gy`` from their L, T, R, B outputs, clipped to the canvas."""
    left, top, right, bottom = ltrb
    # np.clip's arithmetic (minimum of maximum), without its dispatch, which costs more on a few hundred cells
    x1 = np.minimum(np.maximum(gx - scale * left, 0), width)
    y1 = np.minimum(np.maximum(gy - scale * top, 0), height)
    return (
        x1,
        y1,
        np.minimum(np.maximum(gx + scale * right, x1), width),
        np.minimum(np.maximum(gy + scale * bottom, y1), height),
    )


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
    ltrb = [bbox[..., j, :, :] for j in range(4)]
    return np.stack(corners(gx, gy, ltrb, scale, width, height), axis=-3)


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
        self.clustering = cfgs = [cfg.target_class_config[c].clustering_config for c in self.classes]
        # per class, as arrays once (building them costs more than using them on a batch of a few candidates)
        self.threshold = np.array([cc.coverage_threshold for cc in cfgs], np.float32)
        self.cap = np.array([cc.max_candidates for cc in cfgs], np.int64)  # 0: no bound
        self.is_dbscan = np.array([cc.clustering_algorithm is ClusteringAlgorithm.dbscan for cc in cfgs])
        self.aggregate = np.array([cc.confidence_model is ConfidenceModel.aggregate_cov for cc in cfgs])
        self.min_height = np.array([cc.minimum_bounding_box_height for cc in cfgs])
        self.min_conf = np.array([confidence_threshold(cc) for cc in cfgs])
        # per class, the IoU above which DBSCAN clusters are fused (1: never)
        self.fuse_above = np.array(
            [
                cc.dbscan_merge_iou_threshold if cc.clustering_algorithm is ClusteringAlgorithm.dbscan else 1.0
                for cc in self.clustering
            ]
        )
        self.width, self.height = width, height
        self.stride, self.scale, self.offset = stride, bbox_scale, bbox_offset

    def __call__(self, cov: np.ndarray | torch.Tensor, bbox: np.ndarray | torch.Tensor) -> list[Detections]:
        """Detections of a batch of maps: numpy arrays, or tensors on any device (the thresholding and the bound
        then run there, and only the candidates cross to the host)."""
        return self.cluster(cov.shape[0], *self.candidates(cov, bbox))

    def candidates(self, cov: np.ndarray | torch.Tensor, bbox: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
        """The candidates of a batch on the host, in (image, class, grid) order: ``image, k, y, x, score``,
        ``ltrb [4, N]`` and DBSCAN ``labels``, thresholded and bounded where the maps are (labels found there for
        tensors; None for numpy maps: :meth:`cluster` finds them)."""
        b, c, h, w = cov.shape
        if c != len(self.classes) or tuple(bbox.shape) != (b, 4 * c, h, w):
            raise ValueError(
                f"expected cov [B, {len(self.classes)}, H, W] and bbox [B, {4 * len(self.classes)}, H, W],"
                f" got {tuple(cov.shape)} and {tuple(bbox.shape)}"
            )
        if isinstance(cov, torch.Tensor):
            return self._candidates_tensor(cov, bbox)
        return self._candidates(np.asarray(cov, np.float32), np.asarray(bbox, np.float32))

    def _candidates(self, cov: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every candidate of the batch, in (image, class, grid) order: its cell, coverage and L, T, R, B."""
        b, c, h, w = cov.shape
        image, k, y, x = np.nonzero(cov > self.threshold[:, None, None])
        image, k, y, x = self._bounded(cov, image, k, y, x)
        return image, k, y, x, cov[image, k, y, x], bbox.reshape(b, c, 4, h, w)[image, k, :, y, x].T, None

    def _candidates_tensor(self, cov: torch.Tensor, bbox: torch.Tensor) -> tuple[np.ndarray, ...]:
        """:meth:`_candidates` where the maps are: the same cells, in the same order, with their DBSCAN clusters,
        brought to the host as one ``[N, 10]`` float32 array (indices are exact in float32)."""
        b, c, h, w = cov.shape
        cov = cov.float()
        thr = torch.from_numpy(self.threshold).to(cov.device)[:, None, None]
        image, k, y, x = torch.nonzero(cov > thr, as_tuple=True)
        score = cov[image, k, y, x]
        caps = torch.from_numpy(self.cap).to(cov.device)[k]
        group = image * c + k
        counts = torch.bincount(group, minlength=b * c)
        over = (caps > 0) & (counts[group] > caps)
        if bool(over.any()):  # rank within each (image, class) by coverage, ties in grid order, as _bounded
            order = torch.argsort(-score, stable=True)
            order = order[torch.argsort(group[order], stable=True)]
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order), device=cov.device) - (torch.cumsum(counts, 0) - counts)[group[order]]
            keep = (caps == 0) | (rank < caps)
            image, k, y, x, score = image[keep], k[keep], y[keep], x[keep], score[keep]
        ltrb = bbox.float().reshape(b, c, 4, h, w)[image, k, :, y, x]  # [N, 4]
        rep = self._dbscan_tensor(image, k, y, x, score, ltrb)
        columns = [torch.stack([image, k, y, x], 1).float(), score[:, None], ltrb, rep[:, None].float()]
        host = torch.cat(columns, 1).cpu().numpy()
        cells = host[:, :4].astype(np.int64).T
        rep = host[:, 9].astype(np.int64)
        labels = np.full(len(rep), -1, np.int64)
        labels[rep >= 0] = np.unique(rep[rep >= 0], return_inverse=True)[1]  # numbered as dbscan_segments does
        return (*cells, host[:, 4], np.ascontiguousarray(host[:, 5:9].T), labels)

    def _dbscan_tensor(self, image, k, y, x, score, ltrb) -> torch.Tensor:
        """The DBSCAN clusters of the candidates where they are (:func:`dbscan_tensor`), from the boxes the host
        would compute (the same float32 operations as :func:`corners`)."""
        device, c = score.device, len(self.classes)
        gx = x.float() * self.stride + self.offset
        gy = y.float() * self.stride + self.offset
        left, top, right, bottom = ltrb.unbind(1)
        x1 = (gx - self.scale * left).clamp(0, self.width)
        y1 = (gy - self.scale * top).clamp(0, self.height)
        x2 = torch.maximum(gx + self.scale * right, x1).clamp(max=self.width)
        y2 = torch.maximum(gy + self.scale * bottom, y1).clamp(max=self.height)
        boxes = torch.stack([x1, y1, x2, y2], 1).double()
        cfgs = self.clustering
        clustered = torch.tensor([cc.clustering_algorithm in NEEDS_DBSCAN for cc in cfgs], device=device)
        eps = torch.tensor([cc.dbscan_eps for cc in cfgs], dtype=torch.float64, device=device)
        min_samples = torch.tensor([cc.dbscan_min_samples for cc in cfgs], dtype=torch.float64, device=device)
        group = torch.where(clustered[k], image * c + k, torch.full_like(k, -1))
        return dbscan_tensor(boxes, score.double() / min_samples[k], eps[k], group)

    def cluster(
        self,
        b: int,
        image: np.ndarray,
        k: np.ndarray,
        y: np.ndarray,
        x: np.ndarray,
        score: np.ndarray,
        ltrb: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> list[Detections]:
        """One :class:`Detections` per image of ``b`` from the candidates (``ltrb [4, N]``; ``labels``: their
        DBSCAN labels where :meth:`candidates` found them with the maps, else found here)."""
        cfgs, c = self.clustering, len(self.classes)
        gx = x.astype(np.float32) * self.stride + self.offset
        gy = y.astype(np.float32) * self.stride + self.offset
        boxes = np.stack(corners(gx, gy, ltrb, self.scale, self.width, self.height), 1).astype(np.float64)
        score = score.astype(np.float64)
        group = image * c + k
        ends = np.flatnonzero(np.diff(group)) + 1
        bounds = [0, *ends.tolist(), len(group)]
        segments = list(zip(bounds[:-1], bounds[1:])) if len(group) else []
        if labels is None:
            dbscan = [(s, e, cfgs[k[s]]) for s, e in segments if cfgs[k[s]].clustering_algorithm in NEEDS_DBSCAN]
            labels = dbscan_segments(boxes, score, dbscan)
        # DBSCAN's clusters of the whole batch merged at once; NMS and hybrid group by group
        plain = (labels >= 0) & self.is_dbscan[k]
        merged, weight, count, member, index = merge(np.where(plain, labels, -1), boxes, score)
        cluster_k = np.zeros(len(weight), np.int64)
        cluster_k[index] = k[member]
        cluster_image = np.zeros(len(weight), np.int64)
        cluster_image[index] = image[member]
        found = [(cluster_image, cluster_k, merged, np.where(self.aggregate[cluster_k], weight, weight / count))]
        for s, e in segments:
            cc = cfgs[k[s]]
            if cc.clustering_algorithm is not ClusteringAlgorithm.dbscan:
                bx, conf = CLUSTERERS[cc.clustering_algorithm](Group(boxes[s:e], score[s:e], cc), labels[s:e])
                found.append((np.full(len(conf), image[s]), np.full(len(conf), k[s]), bx, conf))
        det_image, det_k, det_boxes, det_conf = (np.concatenate(parts) for parts in zip(*found))
        keep = (det_boxes[:, 3] - det_boxes[:, 1] >= self.min_height[det_k]) & (det_conf >= self.min_conf[det_k])
        det_image, det_k, det_boxes, det_conf = det_image[keep], det_k[keep], det_boxes[keep], det_conf[keep]
        det_boxes, lead = self._fuse_fragments(det_image, det_k, det_boxes, det_conf)
        det_image, det_k, det_boxes, det_conf = det_image[lead], det_k[lead], det_boxes[lead], det_conf[lead]
        # per image, highest confidence first; ties in class order, then in each class's own order
        order = np.lexsort((det_k, -det_conf, det_image))
        ends = np.cumsum(np.bincount(det_image, minlength=b)).tolist()
        det_boxes, det_k, det_conf = det_boxes[order].reshape(-1, 4), det_k[order].astype(np.int64), det_conf[order]
        return [Detections(det_boxes[s:e], det_k[s:e], det_conf[s:e]) for s, e in zip([0, *ends[:-1]], ends)]

    def _fuse_fragments(
        self, image: np.ndarray, k: np.ndarray, boxes: np.ndarray, conf: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """DBSCAN clusters of one image and class that overlap by more than their class's
        ``dbscan_merge_iou_threshold``, fused (:func:`fuse_overlapping`): the boxes, and which detections stay."""
        limit = self.fuse_above
        boxes, lead = boxes.copy(), np.ones(len(k), bool)
        group = image * len(self.classes) + k
        for g in np.unique(group[limit[k] < 1]):
            sel = np.flatnonzero(group == g)
            boxes[sel], lead[sel] = fuse_overlapping(boxes[sel], conf[sel], float(limit[k[sel[0]]]))
        return boxes, lead

    def _bounded(self, cov: np.ndarray, *cells: np.ndarray) -> tuple[np.ndarray, ...]:
        """The candidates (image, class, y, x) left after the bound: at most ``max_candidates`` per image and
        class, the highest coverages, in grid order (clustering's numbering follows that order)."""
        image, k, y, x = cells
        cap = np.where(self.cap > 0, self.cap, len(k))[k]
        group = image * cov.shape[1] + k
        counts = np.bincount(group)
        if not (counts[group] > cap).any():
            return cells
        order = np.lexsort((-cov[image, k, y, x], group))  # by group, highest coverage first
        rank = np.empty(len(k), np.int64)
        rank[order] = np.arange(len(k)) - (np.cumsum(counts) - counts)[group[order]]
        keep = rank < cap
        return image[keep], k[keep], y[keep], x[keep]
