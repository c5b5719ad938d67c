"""INT8 post-training static quantization with ONNX Runtime (QDQ, per-channel weights).

Activations and weights are symmetric signed int8, so the same QDQ model runs in ONNX Runtime and is
consumed by TensorRT as explicit quantization; the activation scales also give TensorRT's text
calibration cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from transferdet.export.onnx_export import INPUT_NAME
from transferdet.utils.io import atomic_path

METHODS = ("minmax", "entropy", "percentile")


class _Reader:
    """ONNX Runtime's CalibrationDataReader over an array of preprocessed images [N, 3, H, W]."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size
        self._it: Iterator | None = None

    def get_next(self):
        if self._it is None:
            self._it = ({INPUT_NAME: self.images[i:i + self.batch_size]}
                        for i in range(0, len(self.images), self.batch_size))
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8(fp32_model: Path, out: Path, images: np.ndarray, method: str = "minmax",
                  batch_size: int = 8) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}; allowed: {', '.join(METHODS)}")
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    with atomic_path(out.with_suffix(".pre.onnx")) as pre, atomic_path(out) as tmp:
        quant_pre_process(str(fp32_model), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), _Reader(images.astype(np.float32), batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calib,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        onnx.checker.check_model(onnx.load(str(tmp)))
    out.with_suffix(".pre.onnx").unlink(missing_ok=True)
    return out


def activation_ranges(qdq_model: Path) -> dict[str, float]:
    """Tensor name -> absolute maximum (scale * 127) of every quantized activation of a QDQ model."""
    model = onnx.load(str(qdq_model))
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:  # weights are initializers
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        if scale is not None and scale.size == 1:
            out[node.input[0]] = float(scale.reshape(()) * 127.0)
    return out
