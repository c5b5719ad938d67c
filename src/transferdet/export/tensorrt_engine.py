"""TensorRT engine build with the TensorRT Python API, where TensorRT and an NVIDIA GPU exist.

INT8 engines are built from the QDQ model (explicit quantization: the scales come from the model, no
calibrator runs). Elsewhere :func:`build_engine` returns the reason it did not build, and the ONNX
model, calibration cache and DeepStream config are still there for ``trtexec``/DeepStream to build it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transferdet.export.onnx_export import INPUT_NAME
from transferdet.utils.io import atomic_path

INSTALL_HINT = (
    "install TensorRT on a machine with an NVIDIA GPU (pip install 'transferdet[tensorrt]'), or build "
    "the engine there with: trtexec --onnx=MODEL.onnx --saveEngine=model.engine [--fp16|--int8]"
)


def tensorrt_unavailable() -> str | None:
    """None when an engine can be built here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    if not torch.cuda.is_available():
        return f"no CUDA GPU on this machine: {INSTALL_HINT}"
    return None


def build_engine(
    onnx_path: Path, engine_path: Path, *, data_type: str, height: int, width: int, max_batch_size: int, workspace: int
) -> str | None:
    """Build and write a serialized engine; returns None on success or the reason it was not built."""
    reason = tensorrt_unavailable()
    if reason:
        return reason
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return f"TensorRT could not parse {onnx_path}: {errors}"
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if data_type == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers without Q/DQ may run in fp16
    profile = builder.create_optimization_profile()
    shape = (3, height, width)
    profile.set_shape(INPUT_NAME, (1, *shape), (max_batch_size, *shape), (max_batch_size, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return "TensorRT failed to build the engine (see its log above)"
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return None
