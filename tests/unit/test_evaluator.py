"""The evaluator on hand-computed cases, and against an independent textbook VOC implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferdet.config.schema import AveragePrecisionMode, EvaluationBoxConfig, EvaluationConfig
from transferdet.evaluation import Detections, Evaluator, GroundTruth
from transferdet.evaluation.coco import coco_map

CLASSES = ["car", "pedestrian"]


def config(mode: str = "INTEGRATE", **kw) -> EvaluationConfig:
    cfg = EvaluationConfig(average_precision_mode=AveragePrecisionMode[mode], kitti_difficulty=False, **kw)
    cfg.minimum_detection_ground_truth_overlap = {"car": 0.7, "pedestrian": 0.5}
    return cfg


def gt(*rows) -> GroundTruth:
    """rows of (x1, y1, x2, y2, class_id)."""
    a = np.array(rows, float).reshape(-1, 5)
    return GroundTruth(a[:, :4], a[:, 4].astype(int))


def det(*rows) -> Detections:
    """rows of (x1, y1, x2, y2, class_id, score)."""
    a = np.array(rows, float).reshape(-1, 6)
    return Detections(a[:, :4], a[:, 4].astype(int), a[:, 5])


CARS = [(10, 10, 50, 40, 0), (60, 10, 100, 40, 0), (110, 10, 150, 40, 0), (160, 10, 200, 40, 0)]


def test_perfect_predictions_give_ap_1():
    g = [gt(*CARS), gt((5, 5, 25, 60, 1))]
    d = [det(*[(*c[:4], 0, 0.9) for c in CARS]), det((5, 5, 25, 60, 1, 0.8))]
    for mode in ("SAMPLE", "INTEGRATE"):
        r = Evaluator(CLASSES, config(mode)).evaluate(g, d)
        assert r.ap("car") == pytest.approx(1.0) and r.ap("pedestrian") == pytest.approx(1.0)
        assert r.mean_ap() == pytest.approx(1.0)


def test_one_false_positive_ranked_above_all_true_positives():
    # precision 0, 1/2, 2/3, 3/4, 4/5 at recall 0, .25, .5, .75, 1: the envelope is 4/5 everywhere
    d = [det((300, 10, 340, 40, 0, 0.99), *[(*c[:4], 0, 0.9 - 0.1 * i) for i, c in enumerate(CARS)])]
    for mode in ("SAMPLE", "INTEGRATE"):
        assert Evaluator(CLASSES, config(mode)).evaluate([gt(*CARS)], d).ap("car") == pytest.approx(0.8)


def test_duplicates_of_one_object_are_one_tp_and_false_positives():
    d = [det((10, 10, 50, 40, 0, 0.9), (11, 10, 51, 40, 0, 0.8), (10, 11, 50, 41, 0, 0.7))]
    r = Evaluator(CLASSES, config()).evaluate([gt(CARS[0])], d)
    assert r.curves["all"]["car"].is_tp.tolist() == [True, False, False]
    assert r.ap("car") == pytest.approx(1.0)  # the TP comes first: recall 1 at precision 1


def test_detection_on_a_dontcare_region_has_no_effect():
    g_plain = [gt(CARS[0])]
    g_dc = [gt(CARS[0], (200, 0, 300, 50, -1))]
    d = [det((10, 10, 50, 40, 0, 0.5), (210, 10, 240, 40, 0, 0.95))]
    plain = Evaluator(CLASSES, config()).evaluate(g_plain, d)
    ignored = Evaluator(CLASSES, config()).evaluate(g_dc, d)
    assert plain.ap("car") == pytest.approx(0.5)  # the FP ranked first halves the AP
    assert ignored.ap("car") == pytest.approx(1.0)  # inside dontcare: neither TP nor FP
    assert len(ignored.curves["all"]["car"].is_tp) == 1


def test_sample_and_integrate_differ_as_defined():
    # 2 GT; ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    g = [gt(CARS[0], CARS[1])]
    d = [det((*CARS[0][:4], 0, 0.9), (300, 10, 340, 40, 0, 0.8), (*CARS[1][:4], 0, 0.7))]
    integrate = Evaluator(CLASSES, config("INTEGRATE")).evaluate(g, d).ap("car")
    sample = Evaluator(CLASSES, config("SAMPLE")).evaluate(g, d).ap("car")
    assert integrate == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # area under the envelope
    assert sample == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # t = 0..0.5 -> 1, t = 0.6..1 -> 2/3


def test_size_filters_drop_ground_truth_and_predictions():
    cfg = config()
    cfg.evaluation_box_config = {"car": EvaluationBoxConfig(minimum_height=25)}
    g = [gt(CARS[0], (300, 10, 320, 20, 0))]  # second car is 10 px tall: not counted
    d = [det((*CARS[0][:4], 0, 0.5), (400, 10, 420, 20, 0, 0.9))]  # small FP: removed, not an FP
    r = Evaluator(CLASSES, cfg).evaluate(g, d)
    assert r.curves["all"]["car"].num_gt == 1 and r.ap("car") == pytest.approx(1.0)


def test_class_without_ground_truth_has_no_ap_and_is_left_out_of_the_mean():
    r = Evaluator(CLASSES, config()).evaluate([gt(CARS[0])], [det((*CARS[0][:4], 0, 0.9), (0, 0, 9, 30, 1, 0.4))])
    assert math.isnan(r.ap("pedestrian")) and r.mean_ap() == pytest.approx(1.0)
    m = r.metrics("val/")
    assert m["val/mAP"] == pytest.approx(1.0) and math.isnan(m["val/AP/pedestrian"])


def test_iou_threshold_is_per_class():
    shifted = (10, 10, 40, 40)  # IoU 0.75 with a 40x30 box of which it covers 30x30: 900/1200 = 0.75
    r = Evaluator(CLASSES, config()).evaluate(
        [gt((10, 10, 50, 40, 0), (10, 10, 50, 40, 1))], [det((*shifted, 0, 0.9), (*shifted, 1, 0.9))]
    )
    assert r.ap("car") == pytest.approx(1.0) and r.ap("pedestrian") == pytest.approx(1.0)
    tight = config()
    tight.minimum_detection_ground_truth_overlap = {"car": 0.8, "pedestrian": 0.5}
    r = Evaluator(CLASSES, tight).evaluate([gt((10, 10, 50, 40, 0))], [det((*shifted, 0, 0.9))])
    assert r.ap("car") == 0.0


def test_kitti_levels_turn_harder_objects_into_ignore_boxes():
    g = GroundTruth(
        np.array([[10, 10, 60, 60], [100, 10, 130, 40]], float),
        np.array([0, 0]),
        truncated=np.zeros(2),
        occluded=np.array([0, 2]),
    )
    d = Detections(np.array([[10, 10, 60, 60], [100, 10, 130, 40]], float), np.array([0, 0]), np.array([0.9, 0.8]))
    cfg = config()
    cfg.kitti_difficulty = True
    r = Evaluator(CLASSES, cfg).evaluate([g], [d])
    # easy: the occluded 30-px car is ignored, its detection neither TP nor FP
    assert r.curves["easy"]["car"].num_gt == 1 and r.ap("car", "easy") == pytest.approx(1.0)
    assert len(r.curves["easy"]["car"].is_tp) == 1
    assert r.curves["hard"]["car"].num_gt == 2 and r.ap("car", "hard") == pytest.approx(1.0)
    assert r.curves["small"]["car"].num_gt == 0 and r.curves["medium"]["car"].num_gt == 1


# ------------------------------------------------------------------------- independent implementation
def textbook_voc_ap(gts, dets, cls, threshold, mode):
    """Straight from the definitions, one detection at a time over the whole set (no vectorisation)."""
    records = []
    for i, d in enumerate(dets):
        for j in range(len(d.scores)):
            if d.class_ids[j] == cls:
                records.append((-d.scores[j], i, j))
    records.sort()  # by confidence, ties in image then detection order
    used = {i: set() for i in range(len(gts))}
    tps = []
    n_gt = sum(int((g.class_ids == cls).sum()) for g in gts)
    for _, i, j in records:
        b = dets[i].boxes[j]
        best, best_iou = None, -1.0
        for q in range(len(gts[i].boxes)):
            if gts[i].class_ids[q] != cls or q in used[i]:
                continue
            g = gts[i].boxes[q]
            iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
            ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
            inter = iw * ih
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            iou = inter / union if union > 0 else 0.0
            if iou > best_iou:
                best, best_iou = q, iou
        if best is not None and best_iou >= threshold:
            used[i].add(best)
            tps.append(1)
        else:
            tps.append(0)
    tp = fp = 0
    prec, rec = [], []
    for t in tps:
        tp += t
        fp += 1 - t
        prec.append(tp / (tp + fp))
        rec.append(tp / n_gt)
    if mode == "SAMPLE":
        total = 0.0
        for k in range(11):
            ps = [p for p, r in zip(prec, rec) if r >= k / 10]
            total += max(ps) if ps else 0.0
        return total / 11
    area, prev_r = 0.0, 0.0
    for idx, r in enumerate(rec):
        if r > prev_r:
            area += (r - prev_r) * max(prec[idx:])
            prev_r = r
    return area


def random_set(rng: np.random.Generator, images: int = 25, decimals: int | None = 2):
    """Ground truth and detections of ``images`` images: jittered copies of most objects, a duplicate and
    random boxes, with random scores (rounded to ``decimals``: ties happen)."""
    gts, dets = [], []
    for _ in range(images):
        n = rng.integers(0, 6)
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        cls = rng.integers(0, 2, n)
        gts.append(GroundTruth(boxes, cls))
        # detections: jittered copies of some ground truth, duplicates, and random boxes; random scores
        keep = rng.random(n) < 0.8
        near = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        near = np.concatenate([np.minimum(near[:, :2], near[:, 2:]), np.maximum(near[:, :2], near[:, 2:])], 1)
        near_cls = cls[keep]
        m = rng.integers(0, 4)
        rxy = rng.uniform(0, 300, (m, 2))
        rand = np.concatenate([rxy, rxy + rng.uniform(8, 80, (m, 2))], 1)
        dup = near[:1] + 2 if len(near) else np.zeros((0, 4))
        all_boxes = np.concatenate([near, rand, dup])
        all_cls = np.concatenate([near_cls, rng.integers(0, 2, m), near_cls[:1]])
        scores = rng.random(len(all_boxes))
        dets.append(Detections(all_boxes, all_cls, scores if decimals is None else np.round(scores, decimals)))
    return gts, dets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["SAMPLE", "INTEGRATE"])
def test_agrees_with_textbook_voc_on_random_sets(seed, mode):
    gts, dets = random_set(np.random.default_rng(seed))
    r = Evaluator(CLASSES, config(mode)).evaluate(gts, dets)
    for k, cls in enumerate(CLASSES):
        expected = textbook_voc_ap(gts, dets, k, {"car": 0.7, "pedestrian": 0.5}[cls], mode)
        assert abs(r.ap(cls) - expected) < 1e-6


@pytest.mark.parametrize("mode", ["SAMPLE", "INTEGRATE"])
def test_a_bootstrap_resample_scores_as_its_drawn_images_do(mode):
    """The intervals' fast path (each image's matches counted as often as it is drawn) against evaluating the
    drawn images themselves, an image drawn twice given twice."""
    rng = np.random.default_rng(7)
    gts, dets = random_set(rng, decimals=None)  # distinct scores: the two rankings are the same
    evaluator = Evaluator(CLASSES, config(mode))
    matches = evaluator.match(gts, dets)["all"]
    for _ in range(20):
        weights = rng.multinomial(len(gts), np.full(len(gts), 1 / len(gts)))
        drawn = np.repeat(np.arange(len(gts)), weights)
        direct = evaluator.evaluate([gts[i] for i in drawn], [dets[i] for i in drawn])
        for cls in CLASSES:
            fast = matches[cls].curve(AveragePrecisionMode[mode], weights)
            assert fast.num_gt == direct.curves["all"][cls].num_gt
            assert fast.ap == pytest.approx(direct.ap(cls), abs=1e-12, nan_ok=True)


def test_intervals_hold_the_figure_and_narrow_with_more_images():
    gts, dets = random_set(np.random.default_rng(3), images=30, decimals=None)
    evaluator = Evaluator(CLASSES, config(bootstrap_resamples=500))
    r = evaluator.evaluate(gts, dets, intervals=True)
    assert set(r.intervals) == {*CLASSES, ""} and r.interval_confidence == 0.9
    widths = {}
    for cls in CLASSES:
        low, high = r.intervals[cls]
        assert 0 <= low < r.ap(cls) < high <= 1
        widths[cls] = high - low
    m = r.metrics()
    assert m["AP_interval_low/car"] == r.intervals["car"][0] and m["mAP_interval_high"] == r.intervals[""][1]
    # the same images four times over: the same AP, an interval about half as wide (the width goes as 1/sqrt(n))
    r4 = evaluator.evaluate(gts * 4, dets * 4, intervals=True)
    for cls in CLASSES:
        assert r4.ap(cls) == pytest.approx(r.ap(cls))
        low, high = r4.intervals[cls]
        assert 0.3 < (high - low) / widths[cls] < 0.7
    # perfect detections leave nothing to doubt; off by default, and with bootstrap_resamples=0
    perfect = Evaluator(CLASSES, config(bootstrap_resamples=200)).evaluate(
        [gt(*CARS)], [det(*[(*c[:4], 0, 0.9) for c in CARS])], intervals=True
    )
    assert perfect.intervals["car"] == (1.0, 1.0) and math.isnan(perfect.intervals["pedestrian"][0])
    assert not evaluator.evaluate(gts, dets).intervals
    assert not Evaluator(CLASSES, config(bootstrap_resamples=0)).evaluate(gts, dets, intervals=True).intervals
    assert "AP_interval_low/car" not in Evaluator(CLASSES, config()).evaluate(gts, dets).metrics()


def test_coco_map_of_perfect_detections_is_1_and_dontcare_is_crowd():
    g = [gt(*CARS, (250, 0, 300, 50, -1))]
    d = [det(*[(*c[:4], 0, 0.9) for c in CARS], (260, 10, 280, 30, 0, 0.95))]
    m = coco_map(g, d, CLASSES)
    assert m["mAP_coco"] == pytest.approx(1.0) and m["AP50_coco"] == pytest.approx(1.0)
