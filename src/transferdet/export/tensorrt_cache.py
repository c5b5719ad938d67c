"""TensorRT's INT8 calibration cache (text format) for the ONNX model it ships with.

TensorRT (up to 10.x: TensorRT 11 builds INT8 only from explicitly quantized, QDQ models) calibrates every
float tensor of the network it parsed, and matches cache entries to those tensors by name. So the cache has
exactly one entry per float tensor of the deployed ONNX model (its input included), keyed by that model's
tensor names, with the ranges calibrated on that model. Format: line 1 ``TRT-<version>-EntropyCalibration2``
(the TensorRT version as TensorRT writes it: major*1000 + minor*100 + patch before 10, major*10000 +
minor*100 + patch since), then ``<tensor name>: <hex>`` per tensor, the hex being the big-endian float32 bit
pattern of the scale amax / 127.
"""

from __future__ import annotations

import math
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from transferdet.errors import ConfigError, DataError
from transferdet.export.quantize import CalibrationImages
from transferdet.utils.io import write_text_atomic

VERSION_PATTERN = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# the newest TensorRT major whose builder still reads a calibration cache (11 removed implicit quantization)
DEFAULT_TENSORRT_VERSION = "10.13.0"
FLOAT = onnx.TensorProto.FLOAT


def header_version(version: str) -> int:
    """``"8.6.1"`` -> 8601, ``"10.3.0"`` -> 100300: the number TensorRT writes in a cache's first line."""
    m = VERSION_PATTERN.fullmatch(str(version).strip())
    if not m:
        raise ConfigError("export.tensorrt_version", version, "a TensorRT version like 10.13.0 or 8.6.1")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major >= 11:
        raise ConfigError(
            "export.tensorrt_version",
            version,
            "a TensorRT up to 10.x: TensorRT 11 no longer reads "
            "calibration caches (it builds INT8 from the exported "
            "QDQ model, model_int8_qdq.onnx)",
        )
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def network_tensors(model_path: str | Path) -> list[str]:
    """The float tensors of an ONNX model that TensorRT calibrates: its float inputs and every float node
    output (shape computations, which are integer, excluded), in graph order."""
    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    kinds = {
        v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)
    }
    initializers = {t.name for t in model.graph.initializer}
    inputs = [
        i.name for i in model.graph.input if i.name not in initializers and kinds[i.name] == onnx.TensorProto.FLOAT
    ]
    outputs = [o for n in model.graph.node for o in n.output if kinds.get(o) == FLOAT]
    return list(dict.fromkeys(inputs + outputs))


def calibrated_ranges(
    model_path: str | Path, images: np.ndarray, method: str = "minmax", batch_size: int = 8
) -> dict[str, float]:
    """Tensor name -> absolute maximum of its activations on ``images``, for every float tensor of the model,
    with ONNX Runtime's calibrators (minmax, entropy or percentile)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="transferdet-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            [],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods[method],
        )
        calibrator.collect_data(CalibrationImages(images.astype(np.float32), batch_size))
        data = calibrator.compute_data()
    out = {}
    for name in network_tensors(model_path):
        if name not in data:
            raise DataError(model_path, f"ONNX Runtime's calibrator has no range for tensor {name!r}")
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in data[name].range_value)
        out[name] = max(abs(low), abs(high))
    return out


def scale_hex(amax: float) -> str:
    """TensorRT's cache entry of a tensor: the big-endian float32 bits of amax / 127, in hex."""
    scale = max(float(amax), 1e-12) / 127.0
    return struct.pack(">f", scale).hex()


def write_cache(path: Path, ranges: Mapping[str, float], tensorrt_version: str = DEFAULT_TENSORRT_VERSION) -> Path:
    """``ranges``: tensor name -> absolute maximum of its activations; one line each, in the given order (a
    tensor that is always zero gets the smallest scale, not no entry)."""
    lines = [f"TRT-{header_version(tensorrt_version)}-EntropyCalibration2"]
    for name, amax in ranges.items():
        if not math.isfinite(amax):
            raise ValueError(f"tensor {name!r} has a non-finite range {amax}")
        lines.append(f"{name}: {scale_hex(amax)}")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def read_cache(path: Path) -> tuple[str, dict[str, float]]:
    """The header and tensor name -> scale of a cache, parsed back (checks the format)."""
    text = Path(path).read_text().splitlines()
    if not text or not re.fullmatch(r"TRT-\d+-\w*Calibration2?", text[0]):
        raise ValueError(f"{path}:1: not a TensorRT calibration cache header: {text[:1]}")
    out = {}
    for n, line in enumerate(text[1:], start=2):
        name, _, hexval = line.rpartition(": ")
        if not name or len(hexval) != 8:
            raise ValueError(f"{path}:{n}: expected '<tensor>: <8 hex digits>', got {line!r}")
        out[name] = struct.unpack(">f", bytes.fromhex(hexval))[0]
    return text[0], out
