"""DeepStream configs for an exported DetectNet_v2 model: ``nvinfer_config.txt`` (the Gst-nvinfer element),
``labels.txt``, and ``deepstream_app_config.txt`` (a minimal ``deepstream-app`` pipeline: a video file through
that nvinfer into a fake sink, with the performance measurement on).

Current keys only (ONNX, no UFF/etlt ones), checked by a test against DeepStream's key table
(tests/data/deepstream_keys.json). DeepStream's own DetectNet_v2 output parser reads the coverage and bbox
tensors (bbox scale 35, offset 0.5, stride 16, as ours): no custom parser library is needed. File paths are
relative to the config, as DeepStream resolves them.
"""

from __future__ import annotations

import configparser
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from transferdet.config.schema import ClusteringAlgorithm, PostprocessingConfig
from transferdet.export.onnx_export import OUTPUT_NAMES
from transferdet.postprocess.postprocessor import confidence_threshold
from transferdet.utils.io import write_text_atomic

log = logging.getLogger(__name__)
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
CLUSTER_MODE = {ClusteringAlgorithm.dbscan: 1, ClusteringAlgorithm.nms: 2, ClusteringAlgorithm.hybrid: 3}
NVINFER_CONFIG, LABELS, APP_CONFIG = "nvinfer_config.txt", "labels.txt", "deepstream_app_config.txt"
# the video deepstream-app runs when export.deepstream_video names none: DeepStream's own sample stream
SAMPLE_VIDEO = "/opt/nvidia/deepstream/deepstream/samples/streams/sample_1080p_h264.mp4"


def _ini(groups: Mapping[str, Mapping[str, object]]) -> str:
    cfg = configparser.ConfigParser()
    cfg.optionxform = str  # keep the keys' case (minBoxes) and dashes
    for name, keys in groups.items():
        cfg[name] = {k: str(v) for k, v in keys.items()}
    out = io.StringIO()
    cfg.write(out)
    return out.getvalue()


def cluster_mode(post: PostprocessingConfig, classes: Sequence[str]) -> int:
    """nvinfer's ``cluster-mode`` (one for every class there): the classes' clustering algorithm, the first
    class's when they differ (with a warning)."""
    algorithms = [post.target_class_config[c].clustering_config.clustering_algorithm for c in classes]
    if len(set(algorithms)) > 1:
        log.warning(
            "DeepStream clusters every class with one algorithm: %s (the first class's); the classes use %s",
            algorithms[0].value,
            ", ".join(sorted({a.value for a in algorithms})),
        )
    return CLUSTER_MODE[algorithms[0]]


def nvinfer_config(
    *,
    onnx_file: str,
    labels_file: str,
    classes: Sequence[str],
    width: int,
    height: int,
    data_type: str,
    post: PostprocessingConfig,
    resize: bool = False,
    calibration_cache: str | None = None,
    engine_file: str | None = None,
    max_batch_size: int = 1,
) -> str:
    """The text of DeepStream's ``nvinfer`` config for an exported model."""
    prop: dict[str, object] = {
        "gpu-id": 0,
        "net-scale-factor": "0.00392156862745098",  # 1/255: the network takes RGB in [0, 1]
        "model-color-format": 0,  # RGB
        "onnx-file": onnx_file,
        "labelfile-path": labels_file,
        "infer-dims": f"3;{height};{width}",
        "output-blob-names": ";".join(OUTPUT_NAMES),
        "batch-size": max_batch_size,
        "network-mode": NETWORK_MODE[data_type],
        "network-type": 0,  # detector
        "process-mode": 1,  # primary: whole frames
        "num-detected-classes": len(classes),
        "interval": 0,
        "gie-unique-id": 1,
        "cluster-mode": cluster_mode(post, classes),
        # the model was trained on frames padded right/bottom (not stretched): keep the aspect ratio, pad there
        "maintain-aspect-ratio": 0 if resize else 1,
        "symmetric-padding": 0,
    }
    if calibration_cache:
        prop["int8-calib-file"] = calibration_cache
    if engine_file:
        prop["model-engine-file"] = engine_file
    groups: dict[str, Mapping[str, object]] = {"property": prop}
    fused = {
        cls: cc.dbscan_merge_iou_threshold
        for cls in classes
        if (cc := post.target_class_config[cls].clustering_config).clustering_algorithm is ClusteringAlgorithm.dbscan
        and cc.dbscan_merge_iou_threshold < 1
    }
    if fused:
        log.warning(
            "DeepStream's DBSCAN does not fuse overlapping clusters: dbscan_merge_iou_threshold (%s) is not in the"
            " nvinfer config, and DeepStream may give a few more overlapping boxes of one object than transferdet",
            ", ".join(f"{cls} {t:g}" for cls, t in fused.items()),
        )
    if post.test_time_flip:
        log.warning(
            "DeepStream runs the network once a frame: postprocessing.test_time_flip (the outputs averaged with"
            " the mirrored frame's) is not in the nvinfer config, and its boxes may differ from transferdet's"
        )
    for k, cls in enumerate(classes):
        cc = post.target_class_config[cls].clustering_config
        groups[f"class-attrs-{k}"] = {
            "pre-cluster-threshold": f"{cc.coverage_threshold:g}",
            "post-cluster-threshold": f"{confidence_threshold(cc):g}",
            "eps": f"{cc.dbscan_eps:g}",
            "minBoxes": 1,
            "dbscan-min-score": f"{cc.dbscan_min_samples:g}",
            "nms-iou-threshold": f"{cc.nms_iou_threshold:g}",
            "detected-min-h": f"{cc.minimum_bounding_box_height:g}",
            "topk": 100,
        }
    return _ini(groups)


def app_config(*, nvinfer: str, width: int, height: int, batch_size: int, video: str) -> str:
    """A minimal ``deepstream-app`` config: ``video`` (a file) through the nvinfer config, detections counted
    (performance measurement), no display."""
    uri = video if "://" in video else Path(video).resolve().as_uri()
    return _ini(
        {
            "application": {"enable-perf-measurement": 1, "perf-measurement-interval-sec": 5},
            "source0": {"enable": 1, "type": 3, "uri": uri, "num-sources": 1, "gpu-id": 0},
            "streammux": {
                "gpu-id": 0,
                "batch-size": 1,
                "batched-push-timeout": 40000,
                "width": width,
                "height": height,
                "live-source": 0,
                "enable-padding": 0,
            },
            "primary-gie": {
                "enable": 1,
                "gpu-id": 0,
                "gie-unique-id": 1,
                "batch-size": batch_size,
                "config-file": nvinfer,
            },
            "osd": {"enable": 0},
            "tiled-display": {"enable": 0},
            "sink0": {"enable": 1, "type": 1, "sync": 0, "source-id": 0, "gpu-id": 0},
            "tests": {"file-loop": 0},
        }
    )


def write_deepstream(
    folder: Path,
    *,
    onnx_file: Path,
    classes: Sequence[str],
    width: int,
    height: int,
    data_type: str,
    post: PostprocessingConfig,
    resize: bool = False,
    calibration_cache: Path | None = None,
    engine_file: Path | None = None,
    max_batch_size: int = 1,
    video: str | None = None,
) -> list[Path]:
    """Write ``nvinfer_config.txt``, ``labels.txt`` and ``deepstream_app_config.txt`` into ``folder``."""
    labels = folder / LABELS
    write_text_atomic(labels, "".join(f"{c}\n" for c in classes))
    text = nvinfer_config(
        onnx_file=onnx_file.name,
        labels_file=labels.name,
        classes=classes,
        width=width,
        height=height,
        data_type=data_type,
        post=post,
        resize=resize,
        calibration_cache=calibration_cache.name if calibration_cache else None,
        engine_file=engine_file.name if engine_file else None,
        max_batch_size=max_batch_size,
    )
    config = folder / NVINFER_CONFIG
    write_text_atomic(config, text)
    app = folder / APP_CONFIG
    write_text_atomic(
        app,
        app_config(nvinfer=config.name, width=width, height=height, batch_size=1, video=video or SAMPLE_VIDEO),
    )
    return [config, labels, app]
