"""The artefacts of ``transferdet export``: which files a data type gives, and what each consumer gets.

* ``model_fp32.onnx`` always; ``model_fp16.onnx`` for fp16; for int8 ``model_int8_onnxruntime.onnx`` (ONNX
  Runtime's own operator format: its fastest and most accurate INT8 there, for ONNX Runtime only) and
  ``model_int8_qdq.onnx`` (standard QuantizeLinear/DequantizeLinear operators: TensorRT explicit quantization,
  OpenCV and any other ONNX consumer), plus ``calibration.cache`` for TensorRT from ``model_fp32.onnx``;
  every model carries its spec as metadata, so ``infer``/``evaluate`` run it with nothing else;
* ``model.engine`` where TensorRT and a GPU exist (for int8: from the fp32 model and the cache, as DeepStream
  builds it);
* DeepStream: ``nvinfer_config.txt``, ``labels.txt``, ``deepstream_app_config.txt``;
* with ``export.triton=true``, a Triton model repository (``triton/``).
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

from transferdet.config.inputs import deepstream_video
from transferdet.config.schema import CalibrationConfig, DataType, ExportConfig
from transferdet.detector import checkpoint
from transferdet.detector.spec import DetectorSpec
from transferdet.export.deepstream import APP_CONFIG, write_deepstream
from transferdet.export.onnx_export import export_onnx
from transferdet.export.quantize import quantize_int8
from transferdet.export.tensorrt_cache import calibrated_ranges, header_version, write_cache
from transferdet.export.triton import write_triton
from transferdet.inference.tensorrt import build_engine, tensorrt_unavailable
from transferdet.utils.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)
# model -> file: "int8" is ONNX Runtime's model (what runtime=onnxruntime evaluates), "int8_qdq" the portable one
ONNX_FILES = {
    "fp32": "model_fp32.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8_onnxruntime.onnx",
    "int8_qdq": "model_int8_qdq.onnx",
}
CACHE_FILE, ENGINE_FILE, COMMANDS_FILE = "calibration.cache", "model.engine", "DEPLOY.md"


@dataclass
class Exported:
    models: dict[str, Path]  # model (a key of ONNX_FILES) -> ONNX file: "fp32" always, "fp16", or both int8 ones
    deployed: Path  # the model DeepStream / TensorRT build their engine from (with the cache for int8)
    cache: Path | None  # TensorRT calibration cache (int8)
    engine: Path | None  # the TensorRT engine, where one was built
    engine_note: str | None  # why no TensorRT engine was built; None = built
    files: list[Path]  # every file written

    @property
    def portable(self) -> Path:
        """The model other ONNX consumers and Triton get: standard operators only."""
        return self.models.get("int8_qdq") or self.models.get("fp16") or self.models["fp32"]


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
    kind: str = "int8",
    dataset: Mapping[str, Any] | None = None,
) -> Path:
    """An INT8 model of an fp32 export calibrated on ``images`` with the calibration settings: ``kind`` "int8",
    ONNX Runtime's (operator format, ``export.int8_activations``), or "int8_qdq", the portable one (QDQ,
    symmetric int8)."""
    activations, fmt = (e.int8_activations.value, "qoperator") if kind == "int8" else ("int8", "qdq")
    quantize_int8(fp32, path, images, c.calibration_method.value, c.batch_size, activations, fmt, e.int8_weight_bits)
    checkpoint.write_onnx_spec(path, spec, dataset)
    return path


def deployment_commands(spec: DetectorSpec, e: ExportConfig, exported: Exported) -> str:
    """The commands that take this export to TensorRT, DeepStream and Triton (docs/deployment.md explains)."""
    shape = f"3x{spec.height}x{spec.width}"
    shapes = f"--minShapes=input_1:1x{shape} --optShapes=input_1:{e.max_batch_size}x{shape} " + (
        f"--maxShapes=input_1:{e.max_batch_size}x{shape}"
    )
    precision = {"fp32": "", "fp16": " --fp16", "int8": f" --int8 --fp16 --calib={CACHE_FILE}"}[e.data_type.value]
    lines = [
        "# Deploying this export",
        "",
        "Run these in this folder, on a machine with an NVIDIA GPU (see docs/deployment.md).",
        "",
        "```bash",
        "# TensorRT engine (what DeepStream builds by itself when model-engine-file is missing)",
        f"trtexec --onnx={exported.deployed.name}{precision} {shapes} --saveEngine={ENGINE_FILE}",
    ]
    if "int8_qdq" in exported.models:
        lines += [
            "# or INT8 by explicit quantization, from the portable QDQ model (no calibration cache)",
            f"trtexec --onnx={exported.models['int8_qdq'].name} --int8 --fp16 {shapes} --saveEngine={ENGINE_FILE}",
        ]
    lines += [
        "# the same engine's accuracy and speed with transferdet (it builds the engine from the ONNX model)",
        f"transferdet evaluate checkpoint=$PWD/{exported.portable.name} runtime=tensorrt",
        "# DeepStream: a video through nvinfer_config.txt (export.deepstream_video=FILE chooses the video)",
        f"deepstream-app -c {APP_CONFIG}",
        "# Triton Inference Server (export.triton=true writes triton/)",
        "tritonserver --model-repository=$PWD/triton",
        "```",
        "",
    ]
    return "\n".join(lines)


def check_settings(e: ExportConfig) -> None:
    """The export settings the files depend on, checked before anything is written."""
    header_version(e.tensorrt_version)
    deepstream_video(e.deepstream_video)


def _engine(deployed: Path, out: Path, spec: DetectorSpec, e: ExportConfig, cache: Path | None) -> str | None:
    """Build ``model.engine`` where TensorRT and a GPU exist; returns why not otherwise."""
    if not e.engine:
        return "export.engine=false"
    reason = tensorrt_unavailable()
    if reason:
        return reason
    build_engine(
        deployed,
        height=spec.height,
        width=spec.width,
        max_batch_size=e.max_batch_size,
        workspace=e.max_workspace_size,
        calibration_cache=cache,
        out=out,
    )
    return None


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
    fp32 = export_fp32(spec, network, out / ONNX_FILES["fp32"], dataset)
    models, cache = {"fp32": fp32}, None
    if e.data_type is DataType.fp16:
        models["fp16"] = to_fp16(fp32, out / ONNX_FILES["fp16"])
        checkpoint.write_onnx_spec(models["fp16"], spec, dataset)
    elif e.data_type is DataType.int8:
        assert images is not None, "int8 needs calibration images"
        for kind in ("int8", "int8_qdq"):
            models[kind] = quantized(spec, fp32, out / ONNX_FILES[kind], images, c, e, kind, dataset)
        ranges = calibrated_ranges(fp32, images, c.calibration_method.value, c.batch_size)
        cache = write_cache(out / CACHE_FILE, ranges, e.tensorrt_version)
    # TensorRT and DeepStream build INT8 from the fp32 model and its calibration cache (TLT's way)
    deployed = models.get("fp16", fp32)
    engine_path = out / ENGINE_FILE
    note = _engine(deployed, engine_path, spec, e, cache)
    if note:
        log.warning("TensorRT engine not built: %s", note)
    engine = None if note else engine_path
    files = [*models.values(), *([cache] if cache else []), *([engine] if engine else [])]
    files += write_deepstream(
        out,
        onnx_file=deployed,
        classes=spec.classes,
        width=spec.width,
        height=spec.height,
        data_type=e.data_type.value,
        post=spec.postprocessing,
        resize=spec.preprocessing.resize,
        calibration_cache=cache,
        engine_file=engine,
        max_batch_size=e.max_batch_size,
        video=e.deepstream_video,
    )
    exported = Exported(models, deployed, cache, engine, note, files)
    if e.triton:
        files.append(write_triton(out, exported.portable, max_batch_size=e.max_batch_size, engine=engine))
    write_text_atomic(out / COMMANDS_FILE, deployment_commands(spec, e, exported))
    files.append(out / COMMANDS_FILE)
    return exported
