"""Post-processing and evaluation speed on one core.

    python -m transferdet.bench.postprocess_eval [--images 7500] [--out bench_postprocess_eval.json]

Post-processing: DetectNet_v2 outputs of a 3-class 1248x384 network (78x24 grid): 4 to 12 objects of
8 to 60 px cover ellipses of cells, and weak background responses put 1 % or 4 % of the cells above
the 0.005 coverage threshold. Target: <= 2 ms per image. And the outputs of a ResNet-18 DetectNet_v2 with
random weights (every cell a candidate, as in an untrained or early model): target <= 5 ms per image with the
default ``max_candidates`` (with and without ``dbscan_merge_iou_threshold``); the unbounded figure next to it;
and the host's share when the maps are on a GPU (thresholding, the bound and DBSCAN there).
Evaluation: 7,500 images x 3 classes of ground truth and detections (KITTI validation-set scale),
VOC + KITTI levels + size buckets, and separately the COCO line. Target: <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferdet.config.schema import (  # noqa: E402
    ClusteringConfig,
    EvaluationConfig,
    PostprocessingClassConfig,
    PostprocessingConfig,
)
from transferdet.evaluation import Evaluator  # noqa: E402
from transferdet.evaluation.coco import coco_map  # noqa: E402
from transferdet.models import build_detector  # noqa: E402
from transferdet.postprocess import Postprocessor  # noqa: E402
from transferdet.structures import Detections, GroundTruth  # noqa: E402

CLASSES = ["car", "pedestrian", "cyclist"]
W, H, S = 1248, 384, 16


def network_outputs(
    rng: np.random.Generator, n: int, background_rate: float = 0.04
) -> tuple[np.ndarray, np.ndarray, int]:
    """Synthetic DetectNet_v2 outputs of ``n`` images at 1248x384, and the candidates per image."""
    gh, gw = H // S, W // S
    cov = np.zeros((n, 3, gh, gw), np.float32)
    background = rng.random(cov.shape) < background_rate
    cov[background] = rng.uniform(0.006, 0.05, int(background.sum()))
    bbox = rng.uniform(0, 3, (n, 12, gh, gw)).astype(np.float32)
    jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
    for b in range(n):
        for _ in range(rng.integers(4, 12)):
            k = rng.integers(0, 3)
            h = rng.uniform(8, 60) / S
            w = h * rng.uniform(0.5, 2.5)
            cx, cy = rng.uniform(0, gw), rng.uniform(gh * 0.3, gh)
            inside = ((jj + 0.5 - cx) / max(w / 2, 1)) ** 2 + ((ii + 0.5 - cy) / max(h / 2, 1)) ** 2 < 1
            cov[b, k][inside] = rng.uniform(0.3, 0.95, int(inside.sum()))
    return cov, bbox, int((cov > 0.005).sum())


def bench_postprocess(images: int = 200, background_rate: float = 0.04) -> dict:
    """Post-processing time per image on one core."""
    rng = np.random.default_rng(0)
    cfg = PostprocessingConfig(target_class_config={c: PostprocessingClassConfig(ClusteringConfig()) for c in CLASSES})
    post = Postprocessor(CLASSES, cfg, width=W, height=H)
    cov, bbox, candidates = network_outputs(rng, images, background_rate)
    post(cov[:8], bbox[:8])  # warm-up
    times = []
    for i in range(images):
        t = time.perf_counter()
        post(cov[i : i + 1], bbox[i : i + 1])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, images, 16):  # batches of 16, as validation, evaluate and infer call it
        post(cov[i : i + 16], bbox[i : i + 16])
    batched = (time.perf_counter() - t) / images
    tag = f"postprocess_bg{100 * background_rate:g}pct"
    return {
        f"{tag}/ms_per_image_p50": 1e3 * float(np.median(times)),
        f"{tag}/ms_per_image_p90": 1e3 * float(np.percentile(times, 90)),
        f"{tag}/ms_per_image_batch16": 1e3 * batched,
        f"{tag}/candidates_per_image": candidates / images,
    }


def bench_random_model(images: int = 4, repeats: int = 5) -> dict:
    """Post-processing time per image of a random-weight ResNet-18 DetectNet_v2's outputs at 1248x384, with the
    default candidate bound (and with experiment=kitti_finetune's fusion of overlapping clusters) and without one."""
    torch.manual_seed(0)
    model = build_detector(len(CLASSES), 18).eval()
    with torch.no_grad():
        cov, bbox = (t.numpy() for t in model(torch.rand(images, 3, H, W)))
    out = {"random_model/candidates_per_image": float((cov > 0.005).sum()) / images}
    bound = ClusteringConfig().max_candidates
    for tag, cap, fuse in (("bounded", bound, 1.0), ("bounded_fused", bound, 0.5), ("unbounded", 0, 1.0)):
        clustering = ClusteringConfig(max_candidates=cap, dbscan_merge_iou_threshold=fuse)
        cfg = PostprocessingConfig(target_class_config={c: PostprocessingClassConfig(clustering) for c in CLASSES})
        post = Postprocessor(CLASSES, cfg, width=W, height=H)
        post(cov[:1], bbox[:1])  # warm-up
        times = []
        for _ in range(1 if cap == 0 else repeats):
            for i in range(images):
                t = time.perf_counter()
                post(cov[i : i + 1], bbox[i : i + 1])
                times.append(time.perf_counter() - t)
        out[f"random_model/{tag}_ms_per_image_p50"] = 1e3 * float(np.median(times))
        out[f"random_model/{tag}_ms_per_image_max"] = 1e3 * float(np.max(times))
    # the host's share where the maps are on a GPU: thresholding, the bound and DBSCAN ran there (here once, on
    # the CPU, untimed); the host numbers and merges the clusters of the whole batch
    cfg = PostprocessingConfig(target_class_config={c: PostprocessingClassConfig(ClusteringConfig()) for c in CLASSES})
    post = Postprocessor(CLASSES, cfg, width=W, height=H)
    found = post.candidates(torch.from_numpy(cov), torch.from_numpy(bbox))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        post.cluster(images, *found)
        times.append((time.perf_counter() - t) / images)
    out["random_model/bounded_host_share_ms_per_image_p50"] = 1e3 * float(np.median(times))
    return out


def evaluation_data(rng: np.random.Generator, n: int) -> tuple[list[GroundTruth], list[Detections]]:
    """Ground truth and detections of ``n`` images for the evaluation timing."""
    gts, dets = [], []
    for _ in range(n):
        m = rng.integers(2, 10)
        xy = rng.uniform(0, [W - 100, H - 100], (m, 2))
        wh = rng.uniform([10, 10], [200, 150], (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        cls = rng.integers(-1, 3, m)  # some dontcare
        gts.append(GroundTruth(boxes, cls, truncated=rng.uniform(0, 0.6, m), occluded=rng.integers(0, 3, m)))
        hit = (rng.random(m) < 0.8) & (cls >= 0)
        d = np.concatenate(
            [
                boxes[hit] + rng.normal(0, 4, (int(hit.sum()), 4)),
                np.concatenate([q := rng.uniform(0, [W - 100, H - 100], (3, 2)), q + 40], 1),
            ]
        )
        dets.append(Detections(d, np.concatenate([cls[hit], rng.integers(0, 3, 3)]), rng.random(len(d))))
    return gts, dets


def bench_evaluation(images: int = 7500) -> dict:
    """Evaluation time of ``images`` images (VOC + levels + sizes, then COCO)."""
    gts, dets = evaluation_data(np.random.default_rng(1), images)
    cfg = EvaluationConfig(minimum_detection_ground_truth_overlap={"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5})
    t = time.perf_counter()
    result = Evaluator(CLASSES, cfg).evaluate(gts, dets)
    voc = time.perf_counter() - t
    t = time.perf_counter()
    coco_map(gts, dets, CLASSES)
    coco = time.perf_counter() - t
    return {
        "evaluation/images": images,
        "evaluation/seconds_voc_kitti_size": voc,
        "evaluation/seconds_coco": coco,
        "evaluation/mAP": result.mean_ap(),
    }


def main() -> None:
    """Run both measurements from the command line and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=7500, help="images in the evaluation benchmark")
    parser.add_argument("--out", default="bench_postprocess_eval.json")
    args = parser.parse_args()
    results = {
        **bench_postprocess(background_rate=0.01),
        **bench_postprocess(background_rate=0.04),
        **bench_random_model(),
        **bench_evaluation(args.images),
    }
    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v:10.3f}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
