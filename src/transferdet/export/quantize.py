"""INT8 post-training static quantization with ONNX Runtime (per-channel weights).

Weights are symmetric signed int8, per output channel, in 7 bits by default (``[-64, 64]``): CPUs without VNNI
(AVX2, AVX-512 before VNNI) multiply uint8 activations by int8 weights and add pairs of products in 16 bits
(``vpmaddubsw``), which saturates once two products pass 32767 (255 x 127 x 2 does); 7-bit weights cannot
(255 x 64 x 2 = 32640). ONNX Runtime's and OpenVINO's documented workaround; VNNI CPUs and GPUs add in 32 bits.
Two models of the same calibration:

* ``qoperator`` (QLinearConv, QLinearAdd) with asymmetric uint8 activations, for ONNX Runtime only: after a
  ReLU every tensor is >= 0, and a symmetric int8 range wastes its negative half (on a pruned ResNet-18,
  ratio 0.12, symmetric int8 activations lost 12 mAP points where uint8 lost none), and the residual adds stay
  in int8 (27 against 37 ms for QDQ, pruned ResNet-18 at 1248x384, batch 1, 2-core CPU). It uses ONNX
  Runtime's own ``com.microsoft`` operators: other ONNX consumers compute something else.
* ``qdq`` (QuantizeLinear / DequantizeLinear pairs around standard operators) with symmetric int8
  activations: the portable INT8 model, which TensorRT builds by explicit quantization and other runtimes read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from transferdet.export.onnx_export import INPUT_NAME
from transferdet.utils.io import atomic_path

METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qoperator", "qdq")


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader over an array of preprocessed images [N, 3, H, W]."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size
        self._it: Iterator | None = None

    def get_next(self):
        """The next calibration batch, or None at the end."""
        if self._it is None:
            self._it = (
                {INPUT_NAME: self.images[i : i + self.batch_size]} for i in range(0, len(self.images), self.batch_size)
            )
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = None


def quantize_int8(
    fp32_model: Path,
    out: Path,
    images: np.ndarray,
    method: str = "minmax",
    batch_size: int = 8,
    activations: str = "uint8",
    fmt: str | None = None,
    weight_bits: int = 7,
) -> Path:
    """Static INT8 quantization of an fp32 model calibrated on ``images`` (see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}; allowed: {', '.join(METHODS)}")
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations {activations!r}; allowed: uint8, int8")
    symmetric = activations == "int8"
    fmt = fmt or ("qdq" if symmetric else "qoperator")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if weight_bits not in (7, 8):
        raise ValueError(f"weight bits {weight_bits!r}; allowed: 7, 8")
    calib = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with atomic_path(out.with_suffix(".pre.onnx")) as pre, atomic_path(out) as tmp:
        quant_pre_process(str(fp32_model), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            CalibrationImages(images.astype(np.float32), batch_size),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calib,
            reduce_range=weight_bits == 7,  # ONNX Runtime reduces the weights' range only
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
        onnx.checker.check_model(onnx.load(str(tmp)))
    out.with_suffix(".pre.onnx").unlink(missing_ok=True)
    return out
