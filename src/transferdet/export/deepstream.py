"""DeepStream ``nvinfer`` configuration and labels for an exported DetectNet_v2 model.

Uses the stock DetectNet_v2 parser conventions (bbox scale 35, offset 0.5, stride 16): no custom
parser library is needed.
"""

from __future__ import annotations

import configparser
import io
from collections.abc import Sequence
from pathlib import Path

from transferdet.config.schema import ClusteringAlgorithm, PostprocessingConfig
from transferdet.export.onnx_export import INPUT_NAME, OUTPUT_NAMES
from transferdet.utils.io import write_text_atomic

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
CLUSTER_MODE = {ClusteringAlgorithm.dbscan: 1, ClusteringAlgorithm.nms: 2, ClusteringAlgorithm.hybrid: 3}


def nvinfer_config(
    *,
    onnx_file: str,
    labels_file: str,
    classes: Sequence[str],
    width: int,
    height: int,
    data_type: str,
    post: PostprocessingConfig,
    calibration_cache: str | None = None,
    engine_file: str | None = None,
    max_batch_size: int = 1,
) -> str:
    """The text of DeepStream's ``nvinfer`` config for an exported model."""
    cfg = configparser.ConfigParser()
    cfg.optionxform = str  # keep the keys' case and dashes
    first = post.target_class_config[classes[0]].clustering_config
    prop = {
        "gpu-id": "0",
        "net-scale-factor": "0.0039215697906911373",
        "model-color-format": "0",
        "onnx-file": onnx_file,
        "labelfile-path": labels_file,
        "infer-dims": f"3;{height};{width}",
        "uff-input-blob-name": INPUT_NAME,
        "output-blob-names": ";".join(OUTPUT_NAMES),
        "batch-size": str(max_batch_size),
        "network-mode": str(NETWORK_MODE[data_type]),
        "num-detected-classes": str(len(classes)),
        "interval": "0",
        "gie-unique-id": "1",
        "cluster-mode": str(CLUSTER_MODE[first.clustering_algorithm]),
    }
    if calibration_cache:
        prop["int8-calib-file"] = calibration_cache
    if engine_file:
        prop["model-engine-file"] = engine_file
    cfg["property"] = prop
    for k, cls in enumerate(classes):
        cc = post.target_class_config[cls].clustering_config
        cfg[f"class-attrs-{k}"] = {
            "pre-cluster-threshold": f"{cc.coverage_threshold:g}",
            "eps": f"{cc.dbscan_eps:g}",
            "minBoxes": "1",
            "dbscan-min-score": f"{cc.dbscan_min_samples:g}",
            "nms-iou-threshold": f"{cc.nms_iou_threshold:g}",
            "detected-min-h": f"{cc.minimum_bounding_box_height:g}",
            "topk": "100",
        }
    out = io.StringIO()
    cfg.write(out)
    return out.getvalue()


def write_deepstream(
    folder: Path,
    *,
    onnx_file: Path,
    classes: Sequence[str],
    width: int,
    height: int,
    data_type: str,
    post: PostprocessingConfig,
    calibration_cache: Path | None = None,
    max_batch_size: int = 1,
) -> tuple[Path, Path]:
    """Write ``nvinfer_config.txt`` and ``labels.txt`` (paths relative to the folder, as DeepStream resolves them)."""
    labels = folder / "labels.txt"
    write_text_atomic(labels, "".join(f"{c}\n" for c in classes))
    text = nvinfer_config(
        onnx_file=onnx_file.name,
        labels_file=labels.name,
        classes=classes,
        width=width,
        height=height,
        data_type=data_type,
        post=post,
        calibration_cache=calibration_cache.name if calibration_cache else None,
        max_batch_size=max_batch_size,
    )
    config = folder / "nvinfer_config.txt"
    write_text_atomic(config, text)
    return config, labels
