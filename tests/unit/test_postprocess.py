"""Post-processing: decoding and DBSCAN / NMS / hybrid clustering on hand-made network outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferdet.config.schema import (
    ClusteringAlgorithm,
    ClusteringConfig,
    ConfidenceModel,
    PostprocessingClassConfig,
    PostprocessingConfig,
)
from transferdet.models.detectnet import DetectNetV2
from transferdet.postprocess import Postprocessor, decode_boxes
from transferdet.postprocess.clustering import fuse_overlapping
from transferdet.postprocess.flip import flip_averaged, unflip

W, H, STRIDE, SCALE, OFFSET = 384, 128, 16, 35.0, 0.5
A = (40.0, 30.0, 120.0, 90.0)
B = (250.0, 20.0, 300.0, 110.0)


def encode(box, cells):
    """Targets of the textbook encoding for the given (i, j) cells."""
    x1, y1, x2, y2 = box
    out = []
    for i, j in cells:
        gx, gy = j * STRIDE + OFFSET, i * STRIDE + OFFSET
        out.append(((gx - x1) / SCALE, (gy - y1) / SCALE, (x2 - gx) / SCALE, (y2 - gy) / SCALE))
    return np.array(out)


def maps(rng, boxes=(A, B), noise_cells=12):
    """cov [1, 1, 8, 24] and bbox [1, 4, 8, 24] for one class: an ellipse of cells per box, plus noise."""
    cov = np.zeros((1, 1, H // STRIDE, W // STRIDE), np.float32)
    bbox = np.zeros((1, 4, H // STRIDE, W // STRIDE), np.float32)
    for box in boxes:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        cells = [
            (i, j)
            for i in range(H // STRIDE)
            for j in range(W // STRIDE)
            if (((j + 0.5) * STRIDE - cx) / rx) ** 2 + (((i + 0.5) * STRIDE - cy) / ry) ** 2 < 0.8
        ]
        targets = encode(box, cells) + rng.normal(0, 0.3 / SCALE, (len(cells), 4))  # +-0.3 px of noise
        for (i, j), t in zip(cells, targets):
            cov[0, 0, i, j] = rng.uniform(0.5, 0.95)
            bbox[0, :, i, j] = t
    free = np.argwhere(cov[0, 0] == 0)
    for i, j in free[rng.choice(len(free), noise_cells, replace=False)]:
        cov[0, 0, i, j] = 0.02  # weak isolated responses: below DBSCAN's minimum coverage sum
        bbox[0, :, i, j] = rng.uniform(0, 2, 4)
    return cov, bbox


def postprocessor(algorithm: str, **kw) -> Postprocessor:
    cc = ClusteringConfig(clustering_algorithm=ClusteringAlgorithm[algorithm], **{"dbscan_eps": 0.3, **kw})
    cfg = PostprocessingConfig(target_class_config={"car": PostprocessingClassConfig(cc)})
    return Postprocessor(["car"], cfg, width=W, height=H, stride=STRIDE, bbox_scale=SCALE, bbox_offset=OFFSET)


def test_decode_inverts_the_encoding():
    cells = [(i, j) for i in range(8) for j in range(24)]
    t = encode(A, cells).T.reshape(4, 8, 24)
    boxes = decode_boxes(t, STRIDE, SCALE, OFFSET, W, H)
    assert np.allclose(boxes.reshape(4, -1).T, A, atol=1e-4)
    # clipping to the canvas
    clipped = decode_boxes(encode((-20, -5, 400, 130), cells).T.reshape(4, 8, 24), STRIDE, SCALE, OFFSET, W, H)
    assert np.allclose(clipped.reshape(4, -1).T, (0, 0, W, H), atol=1e-4)


@pytest.mark.parametrize("algorithm", ["dbscan", "nms", "hybrid"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_separated_objects_and_noise_give_exactly_two_boxes(algorithm, seed):
    cov, bbox = maps(np.random.default_rng(seed))
    (d,) = postprocessor(algorithm)(cov, bbox)
    assert len(d.boxes) == 2, d.boxes
    found = sorted(d.boxes.tolist())
    assert np.abs(np.array(found) - np.array([A, B])).max() < 1.0
    assert (np.diff(d.scores) <= 0).all()  # highest confidence first


def test_dbscan_confidence_models():
    cov, bbox = maps(np.random.default_rng(3), boxes=(A,), noise_cells=0)
    (agg,) = postprocessor("dbscan")(cov, bbox)
    (mean,) = postprocessor("dbscan", confidence_model=ConfidenceModel.mean_cov)(cov, bbox)
    members = cov[cov > 0]
    assert agg.scores[0] == pytest.approx(members.sum(), rel=1e-5)
    assert mean.scores[0] == pytest.approx(members.mean(), rel=1e-5)


def test_height_and_confidence_filters():
    cov, bbox = maps(np.random.default_rng(4))
    assert len(postprocessor("dbscan", minimum_bounding_box_height=70)(cov, bbox)[0].boxes) == 1  # only B is 90 tall
    assert len(postprocessor("dbscan", dbscan_confidence_threshold=1e6)(cov, bbox)[0].boxes) == 0
    assert len(postprocessor("nms", nms_confidence_threshold=0.01)(cov, bbox)[0].boxes) > 2  # noise passes at 0.01


def test_dbscan_merge_fuses_two_overlapping_clusters_of_one_object():
    """One object whose cells fall into two DBSCAN clusters (eps smaller than the spread of their boxes): two
    detections without ``dbscan_merge_iou_threshold``; with it one, their confidence-weighted mean box with the
    higher confidence; the same two clusters in two classes or two images stay apart."""
    shifted = (A[0] + 8, A[1] + 4, A[2] + 8, A[3] + 4)  # IoU 0.72 with A: 1 - IoU > eps 0.2
    cov = np.zeros((1, 1, H // STRIDE, W // STRIDE), np.float32)
    bbox = np.zeros((1, 4, H // STRIDE, W // STRIDE), np.float32)
    for box, cells, c in ((A, [(3, j) for j in range(3, 6)], 0.75), (shifted, [(3, j) for j in range(6, 8)], 0.5)):
        for (i, j), t in zip(cells, encode(box, cells)):
            cov[0, 0, i, j], bbox[0, :, i, j] = c, t
    (both,) = postprocessor("dbscan", dbscan_eps=0.2)(cov, bbox)
    np.testing.assert_allclose(both.boxes, [A, shifted], atol=1e-3)
    np.testing.assert_allclose(both.scores, [2.25, 1.0], rtol=1e-6)  # aggregate coverage: 3 x 0.75, 2 x 0.5
    (one,) = postprocessor("dbscan", dbscan_eps=0.2, dbscan_merge_iou_threshold=0.5)(cov, bbox)
    np.testing.assert_allclose(one.boxes, [(2.25 * np.array(A) + np.array(shifted)) / 3.25], atol=1e-3)
    np.testing.assert_allclose(one.scores, [2.25], rtol=1e-6)
    (still,) = postprocessor("dbscan", dbscan_eps=0.2, dbscan_merge_iou_threshold=0.9)(cov, bbox)
    np.testing.assert_array_equal(still.boxes, both.boxes)  # they overlap by less than 0.9
    # per image and class: one cluster in each of two classes, or of two images, are not fused
    first, second = np.where(np.arange(W // STRIDE) < 6, cov, 0), np.where(np.arange(W // STRIDE) >= 6, cov, 0)
    cfg = ClusteringConfig(dbscan_eps=0.2, dbscan_merge_iou_threshold=0.5)
    two = PostprocessingConfig(target_class_config={c: PostprocessingClassConfig(cfg) for c in ("car", "van")})
    pp = Postprocessor(["car", "van"], two, width=W, height=H, stride=STRIDE, bbox_scale=SCALE, bbox_offset=OFFSET)
    (classes,) = pp(np.concatenate([first, second], 1), np.concatenate([bbox, bbox], 1))
    np.testing.assert_allclose(classes.boxes, both.boxes, atol=1e-3)
    assert classes.class_ids.tolist() == [0, 1]
    images = postprocessor("dbscan", dbscan_eps=0.2, dbscan_merge_iou_threshold=0.5)(
        np.concatenate([first, second]), np.concatenate([bbox, bbox])
    )
    np.testing.assert_allclose(np.concatenate([d.boxes for d in images]), both.boxes, atol=1e-3)


def test_fusion_is_greedy_by_confidence():
    """As NMS would suppress them: c overlaps b but not a; b joins a (the most confident), so c leads its own."""
    a, b, c = (0.0, 0.0, 10.0, 10.0), (2.0, 0.0, 12.0, 10.0), (5.0, 0.0, 15.0, 10.0)  # IoU a-b 0.67, b-c 0.54
    boxes, conf = np.array([c, b, a]), np.array([0.2, 0.5, 0.9])
    fused, lead = fuse_overlapping(boxes, conf, 0.5)
    assert lead.tolist() == [True, False, True]
    np.testing.assert_allclose(fused[2], (0.9 * np.array(a) + 0.5 * np.array(b)) / 1.4)
    np.testing.assert_array_equal(fused[0], c)
    fused, lead = fuse_overlapping(boxes, conf, 0.7)
    assert lead.all() and (fused == boxes).all()


def test_coverage_threshold_and_empty_output():
    cov = np.zeros((2, 1, 8, 24), np.float32)
    out = postprocessor("dbscan")(cov, np.zeros((2, 4, 8, 24), np.float32))
    assert [len(d.boxes) for d in out] == [0, 0]


def test_batch_of_images_is_processed_per_image():
    rng = np.random.default_rng(5)
    c1, b1 = maps(rng)
    c2, b2 = maps(rng, boxes=(A,))
    out = postprocessor("dbscan")(np.concatenate([c1, c2]), np.concatenate([b1, b2]))
    assert [len(d.boxes) for d in out] == [2, 1]


@pytest.mark.parametrize("algorithm", ["dbscan", "nms", "hybrid"])
def test_candidate_bound_keeps_the_detections_where_it_does_not_bind(algorithm):
    cov, bbox = maps(np.random.default_rng(3))
    n = int((cov > 0.005).sum())
    free = postprocessor(algorithm, max_candidates=0)(cov, bbox)[0]
    for cap in (n, n + 1, 10_000):
        same = postprocessor(algorithm, max_candidates=cap)(cov, bbox)[0]
        np.testing.assert_array_equal(same.boxes, free.boxes)
        np.testing.assert_array_equal(same.scores, free.scores)


def test_candidate_bound_clusters_the_highest_coverages_only():
    rng = np.random.default_rng(4)
    cov, bbox = maps(rng, noise_cells=40)  # 40 weak cells of 0.02 next to the objects' 0.5-0.95 ones
    strong = int((cov > 0.1).sum())
    capped = postprocessor("dbscan", max_candidates=strong)(cov, bbox)[0]
    # the same as removing the weak cells by hand: the bound takes the highest coverages
    only_strong = np.where(cov > 0.1, cov, 0)
    expected = postprocessor("dbscan", max_candidates=0)(only_strong, bbox)[0]
    np.testing.assert_array_equal(capped.boxes, expected.boxes)
    np.testing.assert_array_equal(capped.scores, expected.scores)
    assert len(capped.boxes) == 2
    # an untrained model: every cell a candidate; the bound caps what clustering sees
    noisy = rng.uniform(0.2, 0.8, cov.shape).astype(np.float32)
    bounded = postprocessor("dbscan", max_candidates=20)(noisy, rng.uniform(0, 3, bbox.shape).astype(np.float32))[0]
    assert float(bounded.scores.sum()) <= float(np.sort(noisy.ravel())[-20:].sum()) + 1e-4


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"expected cov \[B, 1, H, W\]"):
        postprocessor("dbscan")(np.zeros((1, 2, 8, 24)), np.zeros((1, 8, 8, 24)))


def _sklearn_dbscan(g):
    """scikit-learn's labels and core-point mask for one group (weights raised by 1e-9 relative: a coverage
    sum that equals the minimum up to rounding reaches it, as in dbscan_labels)."""
    from sklearn.cluster import DBSCAN

    from transferdet.boxes import iou_matrix

    model = DBSCAN(eps=g.cfg.dbscan_eps, min_samples=1, metric="precomputed").fit(
        1.0 - iou_matrix(g.boxes, g.boxes), sample_weight=g.cov / g.cfg.dbscan_min_samples * (1 + 1e-9)
    )
    core = np.zeros(len(g.boxes), bool)
    core[model.core_sample_indices_] = True
    return model.labels_, core


def _random_groups(rng, count=5, spread=6.0):
    from transferdet.postprocess.clustering import Group

    groups = []
    for _ in range(count):
        centres = rng.uniform(0, 300, (rng.integers(1, 5), 2))
        n = int(rng.integers(0, 120))
        base = centres[rng.integers(len(centres), size=n)] + rng.normal(0, spread, (n, 2))
        size = rng.uniform(20, 60, (n, 2))
        boxes = np.concatenate([base, base + size], 1)
        cov = rng.choice([0.006, 0.02, 0.3, 0.8], n, p=[0.5, 0.2, 0.2, 0.1])  # many weak, noise-like candidates
        groups.append(
            Group(
                boxes,
                cov,
                ClusteringConfig(
                    dbscan_eps=float(rng.choice([0.1, 0.2, 0.4])),
                    dbscan_min_samples=float(rng.choice([0.05, 0.5, 1.0])),
                ),
            )
        )
    return groups


@pytest.mark.parametrize("seed", range(12))
def test_batched_dbscan_labels_equal_scikit_learns_numbering_included(seed):
    """dbscan_labels (one graph for all groups, its connected components) against scikit-learn's DBSCAN
    run on each group alone with the dense 1 - IoU matrix: the same labels, numbering included (offset by
    the clusters of the groups before), noise included."""
    from transferdet.postprocess.clustering import dbscan_labels

    rng = np.random.default_rng(seed)
    groups = _random_groups(rng, spread=[4.0, 6.0, 12.0][seed % 3])
    got = dbscan_labels(groups)
    noise = members = offset = 0
    for g, labels in zip(groups, got):
        if not len(g.boxes):
            assert len(labels) == 0
            continue
        ref, _ = _sklearn_dbscan(g)
        np.testing.assert_array_equal(np.where(labels >= 0, labels - offset, -1), ref)
        offset += int(ref.max()) + 1 if (ref >= 0).any() else 0
        noise += int((ref < 0).sum())
        members += int((ref >= 0).sum())
    assert noise > 0 and members > 0  # the cases have both (border points: the test below)


@pytest.mark.parametrize("seed", range(6))
def test_components_are_scipys(seed):
    """min_index_components against SciPy's connected_components on random symmetric graphs (isolated nodes,
    chains in shuffled order, dense clumps): the same partition, each component named by its smallest node."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    from transferdet.postprocess.clustering import min_index_components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    order = rng.permutation(n)
    chain = np.stack([order[:-1], order[1:]])[:, : int(rng.integers(0, n))]  # a long path through shuffled nodes
    clumps = rng.integers(0, n, (2, int(rng.integers(0, 3 * n))))
    r, c = np.concatenate([chain, clumps], 1)
    r, c = np.concatenate([r, c]), np.concatenate([c, r])
    got = min_index_components(n, r, c)
    _, ref = connected_components(sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)), directed=False)
    smallest = np.full(ref.max() + 1, n)
    np.minimum.at(smallest, ref, np.arange(n))
    np.testing.assert_array_equal(got, smallest[ref])


@pytest.mark.parametrize("eps", [0.1, 0.15, 0.4])
def test_screened_neighbours_are_the_float64_ones(eps):
    """A large group is screened in float32 before the float64 test: the same pairs as the float64 matrix alone,
    pairs whose IoU lies a few float32 steps either side of 1 - eps included."""
    from transferdet.boxes import iou_matrix
    from transferdet.postprocess.clustering import SCREEN_FROM, neighbours

    rng = np.random.default_rng(int(eps * 100))
    n = 2 * SCREEN_FROM + 50
    x, y = rng.uniform(0, 1000, n), rng.uniform(0, 300, n)
    size = np.repeat(rng.uniform(5, 200, n // 2), 2)
    # each box's partner is shifted right by d: IoU (s - d) / (s + d) = 1 - eps at d = s eps / (2 - eps)
    d = size * eps / (2 - eps) * (1 + rng.integers(-3, 4, n) * 2.0**-22)
    x[1::2], y[1::2] = x[0::2] + d[1::2], y[0::2]
    boxes = np.stack([x, y, x + size, y + size], 1).astype(np.float32).astype(np.float64)  # float32 corners
    distance = 1.0 - iou_matrix(boxes, boxes)
    near = np.abs(distance - eps) < 1e-5
    assert (near & (distance <= eps)).sum() > 10 and (near & (distance > eps)).sum() > 10  # both sides occur
    np.testing.assert_array_equal(np.stack(neighbours(boxes, eps)), np.stack(np.nonzero(distance <= eps)))
    # corners that are not float32 values are tested in float64 alone
    moved = boxes + 1e-9
    np.testing.assert_array_equal(
        np.stack(neighbours(moved, eps)), np.stack(np.nonzero(1.0 - iou_matrix(moved, moved) <= eps))
    )


@pytest.mark.parametrize("seed", range(12))
def test_dbscan_on_tensors_gives_the_host_labels(seed):
    """dbscan_tensor (the GPU's DBSCAN: padded [K, K] blocks, components by squaring the reachability matrix)
    against dbscan_segments on the same candidates: numbering its representatives gives the same labels, noise
    and border points included; groups left out (-1) are noise. Chains of boxes make components wider than
    one squaring reaches."""
    from transferdet.postprocess.clustering import Group, dbscan_segments, dbscan_tensor

    rng = np.random.default_rng(seed)
    groups = _random_groups(rng, count=7, spread=[4.0, 6.0, 12.0][seed % 3])
    # a chain: each box is the next one's only neighbour at eps 0.1 (IoU 0.905), so the cluster is 39 hops wide
    chain = np.arange(40)[:, None] * np.array([1.0, 0, 1, 0]) + np.array([0, 0, 20, 20])
    groups[0] = Group(chain, np.full(40, 0.5), ClusteringConfig(dbscan_eps=0.1, dbscan_min_samples=0.5))
    groups[1].boxes[:3] = [5, 5, 5, 9]  # empty boxes: no neighbours, not even themselves
    sizes = [len(g.boxes) for g in groups]
    ends = np.cumsum(sizes)
    left_out = 3  # a group of another algorithm: not clustered
    segments = [(int(e) - n, int(e), g.cfg) for i, (g, n, e) in enumerate(zip(groups, sizes, ends)) if i != left_out]
    boxes = np.concatenate([g.boxes for g in groups])
    cov = np.concatenate([g.cov for g in groups])
    expected = dbscan_segments(boxes, cov, segments)
    group = np.repeat(np.arange(len(groups)), sizes)
    group[group == left_out] = -1
    eps = np.repeat([g.cfg.dbscan_eps for g in groups], sizes)
    weight = cov / np.repeat([g.cfg.dbscan_min_samples for g in groups], sizes)
    rep = dbscan_tensor(*(torch.from_numpy(a) for a in (boxes, weight, eps, group))).numpy()
    labels = np.full(len(rep), -1)
    labels[rep >= 0] = np.unique(rep[rep >= 0], return_inverse=True)[1]
    np.testing.assert_array_equal(labels, expected)
    assert (expected[: sizes[0]] == expected[0]).all() and expected[0] >= 0  # the chain: one cluster of 40
    assert (expected == -1).any() and (expected >= 0).any()


def test_dbscan_coverage_sum_equal_to_the_minimum_reaches_it_in_any_order():
    """0.1 + 0.2 + 0.3 is 0.6000000000000001 summed in one order and 0.6 in the other: a neighbourhood whose
    coverages sum to dbscan_min_samples makes a core point either way, in any candidate order."""
    from transferdet.postprocess.clustering import Group, dbscan_labels

    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.2], [0, 0, 10.2, 10], [50, 50, 60, 60]], np.float64)
    cov = np.array([0.1, 0.2, 0.3, 0.6])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        g = Group(boxes[order], cov[order], ClusteringConfig(dbscan_eps=0.3, dbscan_min_samples=0.6))
        (labels,) = dbscan_labels([g])
        np.testing.assert_array_equal(labels, _sklearn_dbscan(g)[0])
        lone = order.index(3)
        overlapping = np.delete(labels, lone)
        assert (overlapping == overlapping[0]).all() and overlapping[0] >= 0  # one cluster of the three boxes
        assert labels[lone] >= 0 and labels[lone] != overlapping[0]  # and the lone box of exactly 0.6


def test_dbscan_border_point_between_two_clusters_joins_the_first_numbered():
    """A weak candidate within eps of a core point of two clusters (boxes 100 px wide, eps 0.2: IoU >= 0.8,
    10 px apart at most) is not core itself; scikit-learn's search gives it to the cluster numbered first,
    the one whose first core point comes first, whichever order the candidates come in."""
    from transferdet.postprocess.clustering import Group, dbscan_labels

    x = {"border": 10.0, "a0": 0.0, "a1": -3.0, "a2": -6.0, "b0": 20.0, "b1": 23.0, "b2": 26.0}
    cov = {"border": 0.05, "a0": 0.45, "a1": 0.45, "a2": 0.45, "b0": 0.45, "b1": 0.45, "b2": 0.45}
    for names in (["border", "b0", "b1", "b2", "a0", "a1", "a2"], ["a2", "border", "b1", "a0", "b0", "b2", "a1"]):
        boxes = np.array([[x[k], 0, x[k] + 100, 50] for k in names])
        g = Group(boxes, np.array([cov[k] for k in names]), ClusteringConfig(dbscan_eps=0.2, dbscan_min_samples=1.0))
        (labels,) = dbscan_labels([g])
        ref, core = _sklearn_dbscan(g)
        np.testing.assert_array_equal(labels, ref)
        at = {k: labels[i] for i, k in enumerate(names)}
        assert not core[names.index("border")] and at["a0"] != at["b0"]
        first = "b0" if names.index("b0") < names.index("a0") else "a0"
        assert at["border"] == at[first] == 0


def test_a_batch_with_a_class_of_each_algorithm_gives_every_image_and_class_its_own_detections():
    """The batch is thresholded, bounded and clustered at once: each image's detections are those of the
    image alone, and each class's those of a one-class post-processor with that class's settings."""
    rng = np.random.default_rng(7)
    per_image = [[maps(rng, boxes=boxes) for boxes in ((A, B), (A,), (B,))] for _ in range(3)]
    cov = np.stack([np.concatenate([c for c, _ in image], 1)[0] for image in per_image])  # [3, 3, 8, 24]
    bbox = np.stack([np.concatenate([b for _, b in image], 1)[0] for image in per_image])  # [3, 12, 8, 24]
    settings = [
        {"clustering_algorithm": ClusteringAlgorithm.dbscan, "confidence_model": ConfidenceModel.mean_cov},
        {"clustering_algorithm": ClusteringAlgorithm.nms},
        {"clustering_algorithm": ClusteringAlgorithm.hybrid, "max_candidates": 9},
    ]
    classes = ["car", "pedestrian", "cyclist"]
    cfg = PostprocessingConfig(
        target_class_config={
            c: PostprocessingClassConfig(ClusteringConfig(dbscan_eps=0.3, dbscan_min_samples=0.05, **kw))
            for c, kw in zip(classes, settings)
        }
    )
    batched = Postprocessor(classes, cfg, width=W, height=H, stride=STRIDE, bbox_scale=SCALE, bbox_offset=OFFSET)(
        cov, bbox
    )
    for i, found in enumerate(batched):
        assert (np.diff(found.scores) <= 0).all() and found.class_ids.dtype == np.int64
        for k, kw in enumerate(settings):
            (alone,) = postprocessor(
                kw["clustering_algorithm"].name, **{x: v for x, v in kw.items() if x != "clustering_algorithm"}
            )(cov[i : i + 1, k : k + 1], bbox[i : i + 1, 4 * k : 4 * k + 4])
            mine = found.class_ids == k
            order = np.argsort(-alone.scores, kind="stable")
            np.testing.assert_array_equal(found.boxes[mine], alone.boxes[order])
            np.testing.assert_array_equal(found.scores[mine], alone.scores[order])
            assert mine.sum() >= 1


@pytest.mark.parametrize("cap", [0, 9, 40])
def test_maps_as_tensors_give_the_numpy_detections(cap):
    """Tensor maps (a GPU's outputs; here the CPU's) are thresholded and bounded where they are and only the
    candidates cross: the same detections as the numpy maps, bit for bit, whether the bound binds or not."""
    rng = np.random.default_rng(11)
    per_image = [[maps(rng, boxes=boxes, noise_cells=30) for boxes in ((A, B), (A,))] for _ in range(4)]
    cov = np.stack([np.concatenate([c for c, _ in image], 1)[0] for image in per_image])  # [4, 2, 8, 24]
    bbox = np.stack([np.concatenate([b for _, b in image], 1)[0] for image in per_image])
    cov[3] = rng.uniform(0.2, 0.8, cov[3].shape)  # an untrained model's image: every cell a candidate
    classes = ["car", "cyclist"]
    algorithms = (ClusteringAlgorithm.dbscan, ClusteringAlgorithm.hybrid)
    cfg = PostprocessingConfig(
        target_class_config={
            c: PostprocessingClassConfig(ClusteringConfig(clustering_algorithm=a, dbscan_eps=0.3, max_candidates=cap))
            for c, a in zip(classes, algorithms)
        }
    )
    post = Postprocessor(classes, cfg, width=W, height=H, stride=STRIDE, bbox_scale=SCALE, bbox_offset=OFFSET)
    expected = post(cov, bbox)
    found = post(torch.from_numpy(cov), torch.from_numpy(bbox))
    assert sum(len(d.boxes) for d in expected) >= 8
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)


def mirror(box):
    x1, y1, x2, y2 = box
    return (W - x2, y1, W - x1, y2)


def test_test_time_flip_maps_the_mirrored_images_outputs_onto_the_original():
    # what the network says about the mirrored image (A and B mirrored), brought back to the original's anchors
    cov, bbox = maps(np.random.default_rng(5), boxes=(mirror(A), mirror(B)), noise_cells=0)
    cov_back, bbox_back = unflip(cov, bbox, STRIDE, SCALE, OFFSET)
    assert np.array_equal(cov_back, cov[..., ::-1])
    # tensors (a GPU's outputs) are brought back the same way
    cov_t, bbox_t = unflip(torch.from_numpy(cov), torch.from_numpy(bbox), STRIDE, SCALE, OFFSET)
    np.testing.assert_array_equal(cov_t.numpy(), cov_back)
    np.testing.assert_array_equal(bbox_t.numpy(), bbox_back)
    (d,) = postprocessor("dbscan")(cov_back, bbox_back)
    assert np.abs(np.array(sorted(d.boxes.tolist())) - np.array([A, B])).max() < 1.0
    # averaging the outputs of an image with those of its mirror image is the same boxes
    cov2, bbox2 = maps(np.random.default_rng(6), boxes=(A, B), noise_cells=0)
    (avg,) = postprocessor("dbscan")((cov_back + cov2) / 2, (bbox_back + bbox2) / 2)
    assert np.abs(np.array(sorted(avg.boxes.tolist())) - np.array([A, B])).max() < 1.0


def test_flip_averaged_outputs_of_a_network_are_mirror_symmetric():
    # any network (here random weights): the averaged outputs of an image and of its mirror image are mirrors
    torch.manual_seed(0)
    net = DetectNetV2(2, 10).eval()

    def run(batch):
        with torch.no_grad():
            cov, bbox = net(batch)
        return cov.numpy(), bbox.numpy()

    outputs = flip_averaged(run, STRIDE, SCALE, OFFSET)
    x = torch.rand(2, 3, H, W)
    cov, bbox = outputs(x)
    cov_m, bbox_m = outputs(x.flip(-1))
    assert cov.shape == (2, 2, H // STRIDE, W // STRIDE) and bbox.shape == (2, 8, H // STRIDE, W // STRIDE)
    assert np.allclose(cov, cov_m[..., ::-1], atol=1e-5)
    # unclipped decoding: x1 = gx - S*L, x2 = gx + S*R with gx = j * stride + offset
    gx = np.arange(W // STRIDE) * STRIDE + OFFSET
    ltrb, ltrb_m = bbox.reshape(2, 2, 4, 8, 24), bbox_m.reshape(2, 2, 4, 8, 24)[..., ::-1]
    x1, x2 = gx - SCALE * ltrb[:, :, 0], gx + SCALE * ltrb[:, :, 2]
    x1_m, x2_m = gx[::-1] - SCALE * ltrb_m[:, :, 0], gx[::-1] + SCALE * ltrb_m[:, :, 2]
    assert np.allclose(x1, W - x2_m, atol=1e-3) and np.allclose(x2, W - x1_m, atol=1e-3)
    assert np.allclose(ltrb[:, :, 1::2], ltrb_m[:, :, 1::2], atol=1e-5)
