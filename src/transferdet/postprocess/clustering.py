"""Clustering of candidate boxes (SPEC section 7).

A *group* is the candidates of one class in one image: ``boxes [K, 4]`` with coverages ``cov [K]``.
DBSCAN runs once for many groups: each group's distances 1 - IoU are divided by its class's eps, so one
neighbourhood graph with eps = 1 (block-diagonal: candidates of different groups are never neighbours)
clusters every group at once. The labels are scikit-learn's DBSCAN labels (``dbscan_labels``; the tests
compare them with scikit-learn's), found as the connected components of the core points: a call of
scikit-learn's DBSCAN costs about 1 ms of input checks and set-up, several times the clustering of the few
hundred candidates of an image, and post-processing is on every image's path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms as tv_nms

from transferdet.boxes import iou_matrix, iou_pairs
from transferdet.config.schema import ClusteringConfig, ConfidenceModel


@dataclass
class Group:
    boxes: np.ndarray  # [K, 4]
    cov: np.ndarray  # [K]
    cfg: ClusteringConfig


def dbscan_labels(groups: Sequence[Group]) -> list[np.ndarray]:
    """Cluster label per candidate of each group (-1 = noise): DBSCAN, for all groups at once.

    Distance is 1 - IoU, eps = ``dbscan_eps``; a candidate is a core point when the coverages in its
    eps-neighbourhood (itself included) sum to at least ``dbscan_min_samples`` (a sum equal to it up to
    rounding counts, whatever the order of summation). The labels are those of scikit-learn's
    ``DBSCAN(metric="precomputed")`` with the coverages as sample weights, numbering included (a test checks
    it), found the way its search finds them: clusters are the connected components of the core points,
    numbered in the order of their first core point, and a border point joins the lowest-numbered cluster
    among its core neighbours (the first to reach it).
    """
    sizes = [len(g.boxes) for g in groups]
    ends = np.cumsum(sizes)
    segments = [(int(e) - n, int(e), g.cfg) for g, n, e in zip(groups, sizes, ends)]
    boxes = np.concatenate([g.boxes.reshape(-1, 4) for g in groups]) if groups else np.zeros((0, 4))
    cov = np.concatenate([g.cov for g in groups]) if groups else np.zeros(0)
    return np.split(dbscan_segments(boxes, cov, segments), ends[:-1])


def dbscan_segments(boxes: np.ndarray, cov: np.ndarray, segments: Sequence[tuple[int, int, ClusteringConfig]]):
    """:func:`dbscan_labels` on flat arrays: each ``[start, end)`` segment of ``boxes [N, 4]`` / ``cov [N]`` is a
    group clustered alone with its config, in one neighbourhood graph; candidates outside every segment are
    noise. Labels are numbered across segments in their order."""
    total = len(boxes)
    labels = np.full(total, -1, np.int64)
    weights = np.zeros(total)
    rows, cols = [], []
    for start, end, cfg in segments:
        if end > start:
            r, c = neighbours(boxes[start:end], cfg.dbscan_eps)
            rows.append(r + start)
            cols.append(c + start)
            weights[start:end] = cov[start:end] / cfg.dbscan_min_samples
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)  # r ascending
        core = np.bincount(r, weights=weights[c], minlength=total) >= 1.0 - 1e-9
        if core.any():
            _label_from_core(labels, r, c, core)
    return labels


# groups from this size on are screened in float32 before the float64 test (below it the screen costs more)
SCREEN_FROM = 64
# a float32 IoU of boxes with float32 corners is within about 1e-6 of the float64 one: this margin keeps every
# pair the float64 test would take
SCREEN_MARGIN = 1e-4


def neighbours(boxes: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(r, c)`` of ``boxes [K, 4]`` (float64; r ascending) with ``1 - IoU <= eps`` in float64.

    A large group whose corners are float32 values (as the post-processor's are) has its IoU matrix computed in
    float32 first (half the time of float64 for the 300 candidates of a bounded class), and only the pairs near
    or within eps are tested again in float64: the same pairs as the float64 matrix, so the labels stay
    scikit-learn's.
    """
    screen = boxes.astype(np.float32) if len(boxes) >= SCREEN_FROM else None
    if screen is None or not np.array_equal(screen, boxes):
        return np.nonzero(1.0 - iou_matrix(boxes, boxes) <= eps)
    r, c = np.nonzero(iou_matrix(screen, screen) >= np.float32(1.0 - eps - SCREEN_MARGIN))
    exact = 1.0 - iou_pairs(boxes[r], boxes[c]) <= eps
    return r[exact], c[exact]


def _label_from_core(labels: np.ndarray, r: np.ndarray, c: np.ndarray, core: np.ndarray) -> None:
    """Fill ``labels`` from a symmetric neighbourhood graph (edges ``r -> c``) and its core points."""
    both = core[r] & core[c]
    component = min_index_components(len(labels), r[both], c[both])
    core_index = np.flatnonzero(core)
    # a component's smallest index is its first core point: numbering them in ascending order is scikit-learn's
    labels[core_index] = np.unique(component[core_index], return_inverse=True)[1]
    edge = ~core[r] & core[c]  # a border point and a core neighbour
    if edge.any():
        none = np.iinfo(np.int64).max
        border = np.full(len(labels), none)
        np.minimum.at(border, r[edge], labels[c[edge]])
        reached = border < none
        labels[reached] = border[reached]


def min_index_components(n: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each node's connected component of a symmetric graph (edges ``r -> c``), as its smallest node index.

    Every node takes the smallest label among its neighbours, then its label's label (pointer jumping), until
    nothing changes: a few rounds for the small graphs of an image's candidates, each a handful of numpy calls,
    where SciPy's ``connected_components`` spends more on checking and converting its sparse input (about 0.2 ms
    a call) than on the search. Labels only fall, and always name a node of the same component, so the fixed
    point is the component's smallest index, reached in at most the graph's diameter + 1 rounds.
    """
    label = np.arange(n)
    while True:
        new = label.copy()
        np.minimum.at(new, r, label[c])
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


# elements of the padded [groups, K, K] matrices one step of dbscan_tensor holds (float64: 128 MiB each)
TENSOR_CHUNK = 1 << 24


@torch.no_grad()
def dbscan_tensor(boxes: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """:func:`dbscan_segments` where the candidates are (a GPU): the same clusters, as each candidate's cluster
    representative, the index of the cluster's first core point (-1: noise); numbering the representatives in
    ascending order gives :func:`dbscan_segments`' labels exactly.

    ``boxes [N, 4]`` float64, ``weight [N]`` (coverage / ``dbscan_min_samples``), ``eps [N]`` (its group's
    ``dbscan_eps``) and ``group [N]`` (ascending; -1: not clustered). Each group is a ``[K, K]`` block of a
    padded batch (K: the largest group, at most ``max_candidates``): the neighbourhood graph is the same
    float64 IoU test as on the host; the connected components of the core points come from ceil(log2 K)
    squarings of the reachability matrix, so the cost has a bound that does not depend on the graph.
    """
    n, device = len(group), group.device
    rep = torch.full((n,), -1, dtype=torch.int64, device=device)
    active = torch.nonzero(group >= 0).flatten()
    if len(active) == 0:
        return rep
    groups, inverse, counts = torch.unique_consecutive(group[active], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(active), device=device) - starts[inverse]
    k = int(counts.max())
    g = len(groups)
    padded = torch.zeros((g, k, 4), dtype=torch.float64, device=device)
    valid = torch.zeros((g, k), dtype=torch.bool, device=device)
    w = torch.zeros((g, k), dtype=torch.float64, device=device)
    padded[inverse, pos] = boxes[active]
    valid[inverse, pos] = True
    w[inverse, pos] = weight[active]
    group_eps = torch.zeros(g, dtype=torch.float64, device=device)
    group_eps[inverse] = eps[active].double()
    first = active[starts]  # each group's first candidate in the flat arrays
    steps = max(1, math.ceil(math.log2(max(k - 1, 1))))
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # 0/1 products: any positive sum is > 0
    index = torch.arange(k, device=device)
    local = torch.empty((g, k), dtype=torch.int64, device=device)
    per = max(1, TENSOR_CHUNK // (k * k))
    for lo in range(0, g, per):
        b, v = padded[lo : lo + per], valid[lo : lo + per]
        rows, cols = b[:, :, None, :], b[:, None, :, :]  # the float64 arithmetic of boxes.iou_matrix
        inter_w = torch.minimum(rows[..., 2], cols[..., 2]) - torch.maximum(rows[..., 0], cols[..., 0])
        inter_h = torch.minimum(rows[..., 3], cols[..., 3]) - torch.maximum(rows[..., 1], cols[..., 1])
        inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
        area = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
        union = area[:, :, None] + area[:, None, :] - inter
        iou = torch.where(union > 0, inter / union, torch.zeros((), dtype=torch.float64, device=device))
        adj = (1.0 - iou <= group_eps[lo : lo + per, None, None]) & v[:, :, None] & v[:, None, :]
        core = ((adj * w[lo : lo + per, None, :]).sum(-1) >= 1.0 - 1e-9) & v
        reach = adj & core[:, :, None] & core[:, None, :]
        reach |= torch.diag_embed(core)
        for _ in range(steps):
            r = reach.to(dtype)
            reach = torch.bmm(r, r) > 0
        none = torch.full((), k, dtype=torch.int64, device=device)
        rep_core = torch.where(reach, index, none).min(-1).values  # the component's first core point
        border = torch.where(adj & core[:, None, :], rep_core[:, None, :], none).min(-1).values
        local[lo : lo + per] = torch.where(core, rep_core, border)
    found = local[inverse, pos]
    rep[active] = torch.where(found < k, first[inverse] + found, torch.full_like(found, -1))
    return rep


def merge(labels: np.ndarray, boxes: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, ...]:
    """The clusters of ``labels`` (-1 = none; sorted by label): coverage-weighted mean boxes ``[M, 4]``, summed
    coverages ``[M]`` and member counts ``[M]``; and which candidates are members and of which cluster."""
    member = labels >= 0
    ids, index = np.unique(labels[member], return_inverse=True)
    w = cov[member]
    weight = np.bincount(index, weights=w, minlength=len(ids)).astype(np.float64)  # int64 when empty
    merged = np.stack([np.bincount(index, weights=w * boxes[member, c], minlength=len(ids)) for c in range(4)], 1)
    merged = merged.astype(np.float64).reshape(-1, 4) / weight[:, None]
    return merged, weight, np.bincount(index, minlength=len(ids)), member, index


def merge_clusters(g: Group, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: the coverage-weighted mean box and its confidence; and the cluster of each candidate."""
    merged, weight, count, member, index = merge(labels, g.boxes, g.cov)
    conf = weight if g.cfg.confidence_model is ConfidenceModel.aggregate_cov else weight / count
    cluster_of = np.full(len(labels), -1)
    cluster_of[member] = index
    return merged, conf, cluster_of


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by hard NMS (torchvision), highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    keep = tv_nms(
        torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
        torch.from_numpy(np.ascontiguousarray(scores, np.float32)),
        iou_threshold,
    )
    return keep.numpy()


def fuse_overlapping(boxes: np.ndarray, conf: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy fusion of one image's detections of one class: the most confident takes every other one that
    overlaps it by IoU > ``iou_threshold`` (those NMS would suppress), and its box becomes their
    confidence-weighted mean; then the most confident of those left, and so on. Returns the boxes (fused where a
    detection leads; its confidence, the highest of its members, stays) and which detections lead."""
    n = len(boxes)
    order = np.argsort(-conf, kind="stable")
    overlap = iou_matrix(boxes[order], boxes[order]) > iou_threshold
    lead = np.full(n, -1)
    for i in range(n):
        if lead[i] < 0:
            lead[(lead < 0) & overlap[i]] = i
            lead[i] = i
    leader = np.empty(n, np.int64)
    leader[order] = order[lead]
    w = np.maximum(conf, 1e-12)  # a plain mean where every confidence is 0
    total = np.bincount(leader, weights=w, minlength=n)
    fused = np.stack([np.bincount(leader, weights=w * boxes[:, c], minlength=n) for c in range(4)], 1)
    leads = leader == np.arange(n)
    return np.where(leads[:, None], fused / np.where(leads, total, 1)[:, None], boxes), leads


def cluster_nms(g: Group, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hard NMS over the candidates, confidence = coverage."""
    keep = nms(g.boxes, g.cov, g.cfg.nms_iou_threshold)
    return g.boxes[keep], g.cov[keep]


def cluster_hybrid(g: Group, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DBSCAN clusters that pass the DBSCAN confidence threshold, then NMS over their member boxes."""
    _, conf, cluster_of = merge_clusters(g, labels)
    passing = np.flatnonzero(conf >= g.cfg.dbscan_confidence_threshold)
    idx = np.flatnonzero(np.isin(cluster_of, passing))
    keep = nms(g.boxes[idx], g.cov[idx], g.cfg.nms_iou_threshold)
    return g.boxes[idx][keep], g.cov[idx][keep]
