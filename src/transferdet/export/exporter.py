"""The artefacts of ``transferdet export``: which files a data type gives, and what each consumer gets.

* ``model_fp32.onnx`` always, and ``model_fp16.onnx`` or ``model_int8.onnx`` for those data types (ONNX
  Runtime static quantization: operator format with uint8 activations, QDQ with int8); every model carries
  its spec as metadata, so ``infer``/``evaluate`` run it with ``runtime=onnxruntime`` and nothing else;
* ``calibration.cache`` (TensorRT text format) for int8;
* ``nvinfer_config.txt`` and ``labels.txt`` for DeepStream, ``model.engine`` where TensorRT and a GPU exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn

from transferdet.config.schema import CalibrationConfig, DataType, ExportConfig, Int8Activations
from transferdet.detector import checkpoint
from transferdet.detector.spec import DetectorSpec
from transferdet.export.deepstream import write_deepstream
from transferdet.export.onnx_export import export_onnx
from transferdet.export.quantize import activation_ranges, calibration_ranges, quantize_int8
from transferdet.export.tensorrt_cache import write_cache
from transferdet.export.tensorrt_engine import build_engine
from transferdet.utils.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class Exported:
    models: dict[str, Path]  # precision -> ONNX model: "fp32" always, and "fp16" or "int8"
    deployed: Path  # the model DeepStream / TensorRT build their engine from
    cache: Path | None  # TensorRT calibration cache (int8)
    engine_note: str | None  # why no TensorRT engine was built; None = built


def to_fp16(fp32: Path, out: Path) -> Path:
    """An fp16 copy of an fp32 ONNX model (float32 input and outputs kept)."""
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)  # float32 input and outputs
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def export_fp32(spec: DetectorSpec, network: nn.Module, path: Path, dataset: Mapping[str, Any] | None = None) -> Path:
    """The fp32 ONNX model of ``network`` with ``spec`` (and the ``dataset`` it was trained on) in its metadata."""
    export_onnx(network, path, spec.height, spec.width)
    checkpoint.write_onnx_spec(path, spec, dataset)
    return path


def quantized(
    spec: DetectorSpec,
    fp32: Path,
    path: Path,
    images: np.ndarray,
    c: CalibrationConfig,
    e: ExportConfig,
    dataset: Mapping[str, Any] | None = None,
) -> Path:
    """The INT8 model of an fp32 export, calibrated on ``images`` with the calibration settings."""
    quantize_int8(fp32, path, images, c.calibration_method.value, c.batch_size, e.int8_activations.value)
    checkpoint.write_onnx_spec(path, spec, dataset)
    return path


def export_models(
    spec: DetectorSpec,
    network: nn.Module,
    out: Path,
    e: ExportConfig,
    c: CalibrationConfig,
    images: np.ndarray | None,
    dataset: Mapping[str, Any] | None = None,
) -> Exported:
    """Every artefact of ``e.data_type`` into ``out``; ``images``: the calibration tensors (int8 only);
    ``dataset``: the settings of the dataset the model was trained on, recorded in every ONNX model."""
    fp32 = export_fp32(spec, network, out / "model_fp32.onnx", dataset)
    models, cache = {"fp32": fp32}, None
    if e.data_type is DataType.fp16:
        models["fp16"] = to_fp16(fp32, out / "model_fp16.onnx")
        checkpoint.write_onnx_spec(models["fp16"], spec, dataset)
    elif e.data_type is DataType.int8:
        assert images is not None, "int8 needs calibration images"
        models["int8"] = quantized(spec, fp32, out / "model_int8.onnx", images, c, e, dataset)
        # the cache holds ranges by the fp32 model's tensor names: a QDQ model has them as they are, the
        # operator-format ONNX Runtime model (uint8) has fused some away, so its ranges come from a QDQ pass
        ranges = (
            activation_ranges(models["int8"])
            if e.int8_activations is Int8Activations.int8
            else calibration_ranges(fp32, images, c.calibration_method.value, c.batch_size, e.int8_activations.value)
        )
        cache = write_cache(out / "calibration.cache", ranges)
    # what DeepStream / TensorRT get: the uint8-activation model is for ONNX Runtime only, so TensorRT builds
    # INT8 from the fp32 model and the calibration cache (TLT's way)
    uint8 = e.data_type is DataType.int8 and e.int8_activations is Int8Activations.uint8
    deployed = fp32 if uint8 else models[e.data_type.value]
    write_deepstream(
        out,
        onnx_file=deployed,
        classes=spec.classes,
        width=spec.width,
        height=spec.height,
        data_type=e.data_type.value,
        post=spec.postprocessing,
        calibration_cache=cache,
        max_batch_size=e.max_batch_size,
    )
    if not e.engine:
        note: str | None = "export.engine=false"
    elif uint8:
        note = (
            f"an INT8 engine from {fp32.name} needs its calibration cache: trtexec --onnx={fp32.name} --int8 "
            f"--calib={cache.name if cache else 'calibration.cache'} --saveEngine=model.engine, or export with "
            "export.int8_activations=int8 (a QDQ model TensorRT builds directly)"
        )
    else:
        note = build_engine(
            deployed,
            out / "model.engine",
            data_type=e.data_type.value,
            height=spec.height,
            width=spec.width,
            max_batch_size=e.max_batch_size,
            workspace=e.max_workspace_size,
        )
    if note:
        log.warning("TensorRT engine not built: %s", note)
    return Exported(models, deployed, cache, note)
