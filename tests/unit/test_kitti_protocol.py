"""evaluation.protocol=kitti: hand-computed cases of the devkit's rules, and agreement with a second,
independent implementation (below: a line-by-line port of evaluate_object.cpp's cleanData, computeStatistics,
getThresholds and eval_class, plain Python, no numpy) on random scenes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from transferdet.data.kitti import KittiObject
from transferdet.evaluation.kitti import Truth, average_precision, kitti_metrics, thresholds
from transferdet.structures import Detections


def obj(cls, x1, y1, x2, y2, truncated=0.0, occluded=0):
    return KittiObject(cls, x1, y1, x2, y2, truncated, occluded)


def ap(gts, dets, cls="car", difficulty=0, points=40):
    """``gts``: per image a list of KittiObject; ``dets``: per image a list of (x1, y1, x2, y2, score), all of
    class ``cls``."""
    truths = [Truth.of(g) for g in gts]
    per_image = [
        (
            np.array([d[:4] for d in ds], float).reshape(-1, 4),
            np.array([d[4] for d in ds], float),
            np.ones(len(ds), bool),
        )
        for ds in dets
    ]
    return average_precision(truths, per_image, cls, difficulty, points)


# ------------------------------------------------------------------ hand-computed cases
def test_perfect_detections_and_the_devkits_few_objects_quirk():
    gts = [[obj("Car", 10, 10, 110, 60)] for _ in range(80)]
    dets = [[(10, 10, 110, 60, 0.1 + i / 100)] for i in range(80)]
    assert ap(gts, dets) == pytest.approx(1.0) and ap(gts, dets, points=11) == pytest.approx(1.0)
    # 40 objects give 40 thresholds: recall point 40/40 is never reached
    assert ap(gts[:40], dets[:40]) == pytest.approx(39 / 40)
    assert ap(gts[:40], dets[:40], points=11) == pytest.approx(10 / 11)
    # one object: its only threshold sits at recall point 0, which 40-point AP leaves out
    assert ap(gts[:1], dets[:1]) == 0.0 and ap(gts[:1], dets[:1], points=11) == pytest.approx(1 / 11)


def test_iou_threshold_is_strict_and_per_class():
    gt = [[obj("Car", 0, 0, 100, 50)] for _ in range(80)]
    # IoU exactly 0.7: intersection 70 x 50 over union 100 x 50 -> not above Car's 0.7
    exact = [[(0, 0, 70, 50, 0.9)] for _ in range(80)]
    assert ap(gt, exact) == 0.0
    ped = [[obj("Pedestrian", 0, 0, 100, 50)] for _ in range(80)]
    assert ap(ped, exact, "pedestrian") == pytest.approx(1.0)  # 0.7 > Pedestrian's 0.5


def test_difficulty_filters_ground_truth_and_detections_by_height():
    # 30 px tall: too short for easy (> 40), counts for moderate (> 25)
    gts = [[obj("Car", 0, 0, 60, 30)] for _ in range(80)]
    dets = [[(0, 0, 60, 30, 0.9)] for _ in range(80)]
    assert math.isnan(ap(gts, dets, difficulty=0))  # no easy ground truth at all
    assert ap(gts, dets, difficulty=1) == pytest.approx(1.0)
    # exactly 25 px: ground truth needs > 25 (ignored), detections need >= 25 (kept, but on an ignored object)
    gts25 = [[obj("Car", 0, 0, 60, 25), obj("Car", 100, 0, 200, 50)] for _ in range(80)]
    dets25 = [[(0, 0, 60, 25, 0.95), (100, 0, 200, 50, 0.9)] for _ in range(80)]
    assert ap(gts25, dets25, difficulty=1) == pytest.approx(1.0)  # the 25 px pair neither helps nor hurts


def test_occlusion_and_truncation_make_ground_truth_ignored_not_missed():
    gts = [[obj("Car", 0, 0, 100, 50, occluded=2), obj("Car", 200, 0, 300, 50, truncated=0.4)] for _ in range(80)]
    for g in gts:
        g.append(obj("Car", 400, 0, 500, 50))
    dets = [[(0, 0, 100, 50, 0.9), (200, 0, 300, 50, 0.8), (400, 0, 500, 50, 0.7)] for _ in range(80)]
    # moderate (occlusion <= 1, truncation <= 0.3): only the third car counts; the hits on the others are ignored
    assert ap(gts, dets, difficulty=1) == pytest.approx(1.0)
    # without those hits nothing changes; without the third car's, nothing is found
    assert ap(gts, [d[2:] for d in dets], difficulty=1) == pytest.approx(1.0)
    assert ap(gts, [d[:2] for d in dets], difficulty=1) == 0.0
    # hard (occlusion <= 2, truncation <= 0.5): all three count
    assert ap(gts, [d[2:] for d in dets], difficulty=2) == pytest.approx(1 / 3, abs=0.03)


def test_neighbour_classes_and_other_classes():
    # a Van is ignored for Car (no false positive), a Truck is not Car ground truth (a false positive)
    base = [[obj("Car", 0, 0, 100, 50)] for _ in range(80)]
    hits = [[(0, 0, 100, 50, 0.5)] for _ in range(80)]
    with_van = [g + [obj("Van", 200, 0, 300, 50)] for g in base]
    with_truck = [g + [obj("Truck", 200, 0, 300, 50)] for g in base]
    extra = [h + [(200, 0, 300, 50, 0.9)] for h in hits]  # the confident detection is on the other vehicle
    assert ap(with_van, extra) == pytest.approx(1.0)
    assert ap(with_truck, extra) == pytest.approx(0.5)  # precision 1/2 at every recall
    # Person_sitting is ignored for Pedestrian
    peds = [[obj("Pedestrian", 0, 0, 30, 80), obj("Person_sitting", 100, 0, 130, 80)] for _ in range(80)]
    det_p = [[(0, 0, 30, 80, 0.5), (100, 0, 130, 80, 0.9)] for _ in range(80)]
    assert ap(peds, det_p, "pedestrian") == pytest.approx(1.0)


def test_dontcare_regions_swallow_false_positives_inside_them():
    gts = [[obj("Car", 0, 0, 100, 50), obj("DontCare", 300, 0, 500, 100)] for _ in range(80)]
    inside = [[(0, 0, 100, 50, 0.5), (310, 10, 400, 60, 0.9)] for _ in range(80)]
    outside = [[(0, 0, 100, 50, 0.5), (600, 10, 700, 60, 0.9)] for _ in range(80)]
    assert ap(gts, inside) == pytest.approx(1.0)
    assert ap(gts, outside) == pytest.approx(0.5)


def test_thresholds_step_recall_by_a_fortieth():
    assert thresholds([0.9], 1) == [0.9]
    scores = [i / 100 for i in range(80)]
    ts = thresholds(scores, 80)  # 80 true positives of 80: every other one is a recall point
    assert len(ts) == 41 and ts[0] == 0.79 and ts[-1] == 0.0


def test_metrics_cover_kitti_classes_of_the_model():
    truths = [Truth.of([obj("Car", 0, 0, 100, 50)]) for _ in range(80)]
    dets = [Detections(np.array([[0, 0, 100, 50.0]]), np.array([0]), np.array(0.1 + i / 100)[None]) for i in range(80)]
    m = kitti_metrics(truths, dets, ["car", "truck"])
    assert m["kitti/AP_easy/car"] == pytest.approx(1.0) and m["kitti/mAP_moderate"] == pytest.approx(1.0)
    assert not any("truck" in k for k in m)


# ------------------------------------------------------------------ an independent port of the devkit
def _box_overlap(a, b, criterion=-1):
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    a_area = (a[2] - a[0]) * (a[3] - a[1])
    b_area = (b[2] - b[0]) * (b[3] - b[1])
    if criterion == -1:
        return inter / (a_area + b_area - inter)
    return inter / (a_area if criterion == 0 else b_area)


def _clean_data(gt, det, cls, diff):
    names = {"car": "car", "pedestrian": "pedestrian", "cyclist": "cyclist"}
    min_h, max_occ, max_trunc = [40, 25, 25][diff], [0, 1, 2][diff], [0.15, 0.3, 0.5][diff]
    ignored_gt, dc, ignored_det, n_gt = [], [], [], 0
    for g in gt:
        t = g["type"].lower()
        valid = -1
        if t == names[cls]:
            valid = 1
        elif (cls == "pedestrian" and t == "person_sitting") or (cls == "car" and t == "van"):
            valid = 0
        height = abs(g["box"][3] - g["box"][1])
        ignore = g["occ"] > max_occ or g["trunc"] > max_trunc or height <= min_h
        if valid == 1 and not ignore:
            ignored_gt.append(0)
            n_gt += 1
        elif valid == 0 or (ignore and valid == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
    for g in gt:
        if g["type"].lower() == "dontcare":
            dc.append(g["box"])
    for d in det:
        valid = 1 if d["type"] == names[cls] else -1
        height = abs(d["box"][3] - d["box"][1])
        if height < min_h:
            ignored_det.append(1)
        elif valid == 1:
            ignored_det.append(0)
        else:
            ignored_det.append(-1)
    return ignored_gt, dc, ignored_det, n_gt


def _compute_statistics(gt, det, dc, ignored_gt, ignored_det, compute_fp, thresh, min_overlap):
    no_detection = -10000000.0
    assigned = [False] * len(det)
    ignored_threshold = [compute_fp and d["score"] < thresh for d in det]
    tp = fp = fn = 0
    v = []
    for i in range(len(gt)):
        if ignored_gt[i] == -1:
            continue
        det_idx, valid_detection, max_iou, assigned_ignored_det = -1, no_detection, 0.0, False
        for j in range(len(det)):
            if ignored_det[j] == -1 or assigned[j] or ignored_threshold[j]:
                continue
            o = _box_overlap(det[j]["box"], gt[i]["box"], -1)
            if not compute_fp and o > min_overlap and det[j]["score"] > valid_detection:
                det_idx, valid_detection = j, det[j]["score"]
            elif compute_fp and o > min_overlap and (o > max_iou or assigned_ignored_det) and ignored_det[j] == 0:
                max_iou, det_idx, valid_detection, assigned_ignored_det = o, j, 1, False
            elif compute_fp and o > min_overlap and valid_detection == no_detection and ignored_det[j] == 1:
                det_idx, valid_detection, assigned_ignored_det = j, 1, True
        if valid_detection == no_detection and ignored_gt[i] == 0:
            fn += 1
        elif valid_detection != no_detection and (ignored_gt[i] == 1 or ignored_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid_detection != no_detection:
            tp += 1
            if not compute_fp:
                v.append(det[det_idx]["score"])
            assigned[det_idx] = True
    if compute_fp:
        for i in range(len(det)):
            if not (assigned[i] or ignored_det[i] == -1 or ignored_det[i] == 1 or ignored_threshold[i]):
                fp += 1
        nstuff = 0
        for box in dc:
            for j in range(len(det)):
                if assigned[j] or ignored_det[j] == -1 or ignored_det[j] == 1 or ignored_threshold[j]:
                    continue
                if _box_overlap(det[j]["box"], box, 0) > min_overlap:
                    assigned[j] = True
                    nstuff += 1
        fp -= nstuff
    return tp, fp, fn, v


def _get_thresholds(v, n_gt):
    t, current = [], 0.0
    v = sorted(v, reverse=True)
    for i in range(len(v)):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < len(v) - 1 else l_recall
        if (r_recall - current) < (current - l_recall) and i < len(v) - 1:
            continue
        t.append(v[i])
        current += 1.0 / 40.0
    return t


def _eval_class(gts, dets, cls, diff, points):
    min_overlap = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}[cls]
    cleaned, v, n_gt = [], [], 0
    for gt, det in zip(gts, dets):
        ig, dc, idet, n = _clean_data(gt, det, cls, diff)
        cleaned.append((ig, dc, idet))
        n_gt += n
        v += _compute_statistics(gt, det, dc, ig, idet, False, 0, min_overlap)[3]
    if n_gt == 0:
        return float("nan")
    ts = _get_thresholds(v, n_gt)
    precision = [0.0] * 41
    for k, t in enumerate(ts):
        tp = fp = 0
        for (gt, det), (ig, dc, idet) in zip(zip(gts, dets), cleaned):
            a, b, _, _ = _compute_statistics(gt, det, dc, ig, idet, True, t, min_overlap)
            tp, fp = tp + a, fp + b
        precision[k] = tp / (tp + fp)
    for k in range(len(ts)):
        precision[k] = max(precision[k:])
    return sum(precision[1:]) / 40 if points == 40 else sum(precision[0::4]) / 11


def _random_scene(rng: random.Random):
    types = ["Car", "Car", "Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "DontCare"]
    gt, det = [], []
    for _ in range(rng.randint(0, 8)):
        x, y = rng.uniform(0, 1100), rng.uniform(0, 300)
        w, h = rng.uniform(10, 200), rng.uniform(15, 120)
        gt.append(
            {
                "type": rng.choice(types),
                "box": (x, y, x + w, y + h),
                "trunc": rng.choice([0.0, 0.1, 0.2, 0.4, 0.8]),
                "occ": rng.randint(0, 3),
            }
        )
    for g in gt:  # detections near some objects, of some class
        if g["type"] != "DontCare" and rng.random() < 0.8:
            x1, y1, x2, y2 = g["box"]
            j = rng.uniform(-0.15, 0.15) * (x2 - x1)
            det.append({"type": rng.choice(["car", "car", "pedestrian", "cyclist"]), "box": (x1 + j, y1, x2 + j, y2)})
    for _ in range(rng.randint(0, 4)):  # and some anywhere
        x, y = rng.uniform(0, 1100), rng.uniform(0, 300)
        det.append(
            {"type": rng.choice(["car", "pedestrian", "cyclist"]), "box": (x, y, x + 60, y + rng.uniform(15, 90))}
        )
    for d in det:
        d["score"] = round(rng.random(), 3)
    return gt, det


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_an_independent_port_of_the_devkit(seed):
    rng = random.Random(seed)
    scenes = [_random_scene(rng) for _ in range(120)]
    truths = [Truth.of([obj(g["type"], *g["box"], g["trunc"], g["occ"]) for g in gt]) for gt, _ in scenes]
    checked = 0
    for cls in ("car", "pedestrian", "cyclist"):
        per_image = [
            (
                np.array([d["box"] for d in det], float).reshape(-1, 4),
                np.array([d["score"] for d in det], float),
                np.array([d["type"] == cls for d in det], bool),
            )
            for _, det in scenes
        ]
        for diff in range(3):
            for points in (40, 11):
                ours = average_precision(truths, per_image, cls, diff, points)
                theirs = _eval_class([gt for gt, _ in scenes], [det for _, det in scenes], cls, diff, points)
                if math.isnan(theirs):
                    assert math.isnan(ours)
                    continue
                assert ours == pytest.approx(theirs, abs=1e-6), (cls, diff, points)
                checked += ours > 0
    assert checked >= 6  # the comparison is not all zeros
