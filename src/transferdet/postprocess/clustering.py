"""Clustering of candidate boxes (SPEC section 7).

A *group* is the candidates of one class in one image: ``boxes [K, 4]`` with coverages ``cov [K]``.
DBSCAN runs once for many groups: each group's distances 1 - IoU are divided by its class's eps, so
one scikit-learn call with eps = 1 over a sparse block-diagonal neighbourhood graph clusters every
group at once (candidates of different groups are never neighbours). scikit-learn's fixed cost per
call is larger than the clustering of a few hundred candidates, so this is what keeps post-processing
within its time budget.

Candidates that are certainly noise are left out of that call: most candidates of a low coverage
threshold are (two thirds of them for a pruned ResNet-18 at 1248x384), and scikit-learn's cost grows
with every point it is given. Leaving them out changes no label (see ``dbscan_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import sklearn
import torch
from scipy import sparse
from sklearn.cluster import DBSCAN
from torchvision.ops import nms as tv_nms

from transferdet.boxes import iou_matrix
from transferdet.config.schema import ClusteringConfig, ConfidenceModel

# stored distances are shifted by this so that identical boxes (distance 0) stay explicit graph edges
_EDGE = 1e-9


@dataclass
class Group:
    boxes: np.ndarray  # [K, 4]
    cov: np.ndarray  # [K]
    cfg: ClusteringConfig


def dbscan_labels(groups: Sequence[Group]) -> list[np.ndarray]:
    """Cluster label per candidate of each group (-1 = noise), from one scikit-learn DBSCAN call.

    Distance is 1 - IoU, eps = ``dbscan_eps``; a candidate is a core point when the coverages in its
    eps-neighbourhood sum to at least ``dbscan_min_samples``. scikit-learn takes an integer
    ``min_samples``, so weights are divided by ``dbscan_min_samples`` and ``min_samples`` is 1:
    sum(cov / m) >= 1 exactly when sum(cov) >= m.
    """
    sizes = [len(g.boxes) for g in groups]
    total = sum(sizes)
    if total == 0:
        return [np.zeros(0, np.int64) for _ in groups]
    rows, cols, data, weights = [], [], [], []
    start = 0
    for g, n in zip(groups, sizes):
        if n:
            scaled = (1.0 - iou_matrix(g.boxes, g.boxes)) / g.cfg.dbscan_eps
            r, c = np.nonzero(scaled <= 1.0)
            rows.append(r + start)
            cols.append(c + start)
            data.append(scaled[r, c] + _EDGE)
            weights.append(g.cov / g.cfg.dbscan_min_samples)
        start += n
    rows_, cols_, data_ = np.concatenate(rows), np.concatenate(cols), np.concatenate(data)
    w = np.concatenate(weights)
    # Noise left out, exactly: a point is a core point when the weights of its neighbourhood (itself
    # included) sum to >= 1. "maybe core" (>= 1 - 1e-9, whatever the order of summation) holds for every
    # core point; a point that is not maybe core and has no maybe-core neighbour is noise. Every neighbour
    # of a core point stays, so core points keep their sums, border points stay below 1, and the clusters
    # (numbered in the same order: the kept points keep theirs) are the ones of the whole graph.
    maybe_core = np.bincount(rows_, weights=w[cols_], minlength=total) >= 1.0 - 1e-9
    keep = maybe_core.copy()
    keep[rows_[maybe_core[cols_]]] = True
    labels = np.full(total, -1, np.int64)
    if keep.any():
        kept_edge = keep[rows_] & keep[cols_]
        new_index = np.cumsum(keep) - 1
        r, c, d = new_index[rows_[kept_edge]], new_index[cols_[kept_edge]], data_[kept_edge]
        n = int(keep.sum())
        order = np.lexsort((d, r))  # each row's distances ascending: scikit-learn then skips its own sort
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
        graph = sparse.csr_matrix((d[order], c[order], indptr), shape=(n, n))  # keeps that order
        model = DBSCAN(eps=1.0 + 2 * _EDGE, min_samples=1, metric="precomputed")
        # inputs are built here, finite and well-formed: skip scikit-learn's per-call validation
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            labels[keep] = model.fit_predict(graph, sample_weight=w[keep])
    return np.split(labels, np.cumsum(sizes)[:-1])


def merge_clusters(g: Group, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: the coverage-weighted mean box and its confidence; and the cluster of each candidate."""
    member = labels >= 0
    ids, index = np.unique(labels[member], return_inverse=True)
    w = g.cov[member]
    weight = np.bincount(index, weights=w, minlength=len(ids)).astype(np.float64)  # int64 when empty
    merged = np.stack([np.bincount(index, weights=w * g.boxes[member, c], minlength=len(ids)) for c in range(4)], 1)
    merged = merged.astype(np.float64).reshape(-1, 4) / weight[:, None]
    if g.cfg.confidence_model is ConfidenceModel.aggregate_cov:
        conf = weight
    else:
        conf = weight / np.bincount(index, minlength=len(ids))
    cluster_of = np.full(len(labels), -1)
    cluster_of[member] = index
    return merged, conf, cluster_of


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by hard NMS (torchvision), highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    keep = tv_nms(torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
                  torch.from_numpy(np.ascontiguousarray(scores, np.float32)), iou_threshold)
    return keep.numpy()


def cluster_dbscan(g: Group, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes, conf, _ = merge_clusters(g, labels)
    return boxes, conf


def cluster_nms(g: Group, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    keep = nms(g.boxes, g.cov, g.cfg.nms_iou_threshold)
    return g.boxes[keep], g.cov[keep]


def cluster_hybrid(g: Group, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DBSCAN clusters that pass the DBSCAN confidence threshold, then NMS over their member boxes."""
    _, conf, cluster_of = merge_clusters(g, labels)
    passing = np.flatnonzero(conf >= g.cfg.dbscan_confidence_threshold)
    idx = np.flatnonzero(np.isin(cluster_of, passing))
    keep = nms(g.boxes[idx], g.cov[idx], g.cfg.nms_iou_threshold)
    return g.boxes[idx][keep], g.cov[idx][keep]
